//! The node's network traffic, from `/proc/1/net/dev` under the `/proc` the collector reads:
//! the network namespace of the node's first process, that is the node's own, where the
//! collector's pod has a namespace of its own (without `hostNetwork`). One file for all
//! interfaces, where sysfs has nine per interface.
//!
//! The traffic is the sum over the interfaces but the loopback. On a node whose pods are
//! bridged, a pod's traffic to the outside is counted on its veth and again on the physical
//! interface, as in the sum of node_exporter's per-device counters.

use std::collections::HashMap;

/// Bytes received and sent over the node's interfaces between two readings.
#[derive(Debug, Default)]
pub struct NetworkTraffic {
    /// Each interface's counters at the last reading: (received, transmitted).
    last: HashMap<String, (u64, u64)>,
}

impl NetworkTraffic {
    /// Takes a reading of `/proc/<pid>/net/dev` (`content`), and returns the bytes received
    /// and transmitted since the last reading. An interface's first reading counts nothing,
    /// and a counter that went back (the interface was recreated) counts from zero.
    pub fn since_last(&mut self, content: &[u8]) -> (u64, u64) {
        let mut current = HashMap::with_capacity(self.last.len());
        let (mut received, mut transmitted) = (0, 0);
        for (name, rx, tx) in parse_net_dev(content) {
            if name == "lo" {
                continue;
            }
            if let Some(&(last_rx, last_tx)) = self.last.get(name) {
                received += if rx >= last_rx { rx - last_rx } else { rx };
                transmitted += if tx >= last_tx { tx - last_tx } else { tx };
            }
            current.insert(name.to_owned(), (rx, tx));
        }
        self.last = current;
        (received, transmitted)
    }
}

/// The interfaces of a `/proc/<pid>/net/dev` file with their received and transmitted
/// byte counters (the first and ninth numbers after the name). Lines that do not have that
/// shape, such as the two header lines, are left out.
fn parse_net_dev(content: &[u8]) -> impl Iterator<Item = (&str, u64, u64)> {
    std::str::from_utf8(content)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let mut numbers = counters.split_whitespace().map(str::parse::<u64>);
            let received = numbers.next()?.ok()?;
            let transmitted = numbers.nth(7)?.ok()?;
            Some((name.trim(), received, transmitted))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "Inter-|   Receive                                                |  Transmit\n \
        face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

    fn net_dev(lines: &[(&str, u64, u64)]) -> Vec<u8> {
        let mut text = HEADER.to_owned();
        for (name, rx, tx) in lines {
            text.push_str(&format!(
                "{name:>6}: {rx} 10 0 0 0 0 0 0 {tx} 20 0 0 0 0 0 0\n"
            ));
        }
        text.into_bytes()
    }

    #[test]
    fn parses_the_byte_counters_of_each_interface() {
        let content = net_dev(&[("lo", 5, 5), ("eth0", 1000, 2000)]);
        let parsed: Vec<_> = parse_net_dev(&content).collect();
        assert_eq!(parsed, vec![("lo", 5, 5), ("eth0", 1000, 2000)]);
        assert_eq!(parse_net_dev(b"eth0: 12 x\nnot a line\n").count(), 0);
    }

    #[test]
    fn counts_the_traffic_between_readings_without_the_loopback() {
        let mut traffic = NetworkTraffic::default();
        let first = net_dev(&[("lo", 5, 5), ("eth0", 1000, 2000), ("veth1", 10, 10)]);
        assert_eq!(traffic.since_last(&first), (0, 0), "the first reading");
        let second = net_dev(&[("lo", 900, 900), ("eth0", 1500, 2100), ("veth1", 30, 15)]);
        assert_eq!(traffic.since_last(&second), (520, 105));
        // veth1 recreated (counters from zero again), veth2 new: counted from the next one.
        let third = net_dev(&[("eth0", 1500, 2100), ("veth1", 7, 3), ("veth2", 50, 50)]);
        assert_eq!(traffic.since_last(&third), (7, 3));
    }

    #[test]
    fn reads_the_nodes_interfaces() {
        let content = std::fs::read("/proc/1/net/dev").expect("/proc/1/net/dev");
        assert!(parse_net_dev(&content).any(|(name, _, _)| name == "lo"));
    }
}
