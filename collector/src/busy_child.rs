//! A test helper: a child process that spins on one core until dropped.

use std::process::{Child, Command};

/// A `sh` looping forever; killed and reaped on drop, also when a test panics.
pub struct BusyChild(Child);

impl BusyChild {
    /// Starts the loop.
    pub fn spawn() -> Self {
        Self(
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .expect("sh starts"),
        )
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for BusyChild {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}
