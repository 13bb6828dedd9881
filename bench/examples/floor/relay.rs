//! What both floor probes share (`relay_floor.rs`, `fanout_floor.rs`, which include this
//! file): the relay process they start from their own binary, and the role-tagged loopback
//! connections they open to it.

use std::env;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The relay process, killed when the load ends, however it ends.
pub struct Relay {
    child: Child,
    pub port: u16,
}

impl Relay {
    /// Starts this binary with `args` (its `serve` mode) and reads the port it prints.
    pub fn start(args: &[&str]) -> Result<Self> {
        let mut child = Command::new(env::current_exe()?)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the relay")?;
        let stdout = child.stdout.take().context("relay stdout")?;
        // Killed on drop from here on, even if its first line is not a port.
        let mut relay = Relay { child, port: 0 };
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        relay.port = line.trim().parse().context("the relay's port")?;
        Ok(relay)
    }

    /// A loopback connection that announces itself with `role`, Nagle off.
    pub async fn connect(&self, role: u8) -> Result<TcpStream> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).await?;
        s.set_nodelay(true)?;
        s.write_all(&[role]).await?;
        Ok(s)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
