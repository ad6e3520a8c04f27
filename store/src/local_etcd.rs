//! A local etcd cluster (Debian's `etcd-server` binary) on free loopback
//! ports, for the tests, benchmarks and demos of high availability: one
//! member or several, with short elections so leases can be short. Its
//! members are killed when it is dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::etcd::{Etcd, EtcdError};

pub struct LocalEtcd {
    members: Vec<Child>,
    /// The members' client URLs, comma-separated (what `--etcd` takes).
    pub endpoints: String,
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for member in &mut self.members {
            let _ = member.kill();
            let _ = member.wait();
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl LocalEtcd {
    /// Starts `members` etcd members with their data under `data`.
    pub fn start(data: &Path, members: usize) -> std::io::Result<LocalEtcd> {
        let ports = (0..members.max(1))
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<std::io::Result<Vec<(u16, u16)>>>()?;
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut local = LocalEtcd {
            members: Vec::new(),
            endpoints: String::new(),
        };
        let mut urls = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = Command::new("etcd")
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(data.join(format!("e{i}")))
                .args(["--listen-client-urls", &url])
                .args(["--advertise-client-urls", &url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--election-timeout", "500", "--heartbeat-interval", "50"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            local.members.push(child);
            urls.push(url);
        }
        local.endpoints = urls.join(",");
        Ok(local)
    }

    /// The members' process ids (a test freezes them with the masters,
    /// as a paused machine would).
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(Child::id).collect()
    }

    /// Waits until the cluster answers (it has elected a leader).
    pub async fn ready(&self, timeout: Duration) -> Result<(), EtcdError> {
        let client = Etcd::new(&self.endpoints)?;
        let deadline = Instant::now() + timeout;
        loop {
            match client.get("/ready").await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}
