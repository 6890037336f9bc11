//! A TCP proxy to a test server that a test can cut, to stand for a database that goes
//! away and comes back: while down, it closes every open connection and every new one at
//! once.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy on a free loopback port to `upstream`, up until [`CuttableProxy::set_up`] says
/// otherwise; it stops with the test's runtime.
pub struct CuttableProxy {
    /// Where clients connect.
    pub address: SocketAddr,
    up: watch::Sender<bool>,
}

impl CuttableProxy {
    /// Starts forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (up, watcher) = watch::channel(true);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut watcher = watcher.clone();
                if !*watcher.borrow() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watcher.wait_for(|up| !up) => {}
                    }
                });
            }
        });
        Self { address, up }
    }

    /// Cuts every connection and refuses new ones (`false`), or forwards again (`true`).
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}
