//! The echo: returns every datagram to its sender unchanged and counts them per phase.
//!
//! At the peer it receives the relayed payloads (stamp first); standing in for the relay (the
//! generator-alone baseline) it receives ChannelData and returns it as ChannelData. Either way
//! the stamp tells the phase.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

use super::wire::Stamp;
use super::{BenchError, tune_socket};
use udp_batch::Batch;

/// Where to listen and for how long at most.
#[derive(Debug, Clone)]
pub struct EchoSpec {
    pub bind: SocketAddr,
    pub batch: usize,
    pub max_duration: Duration,
}

/// Datagrams of one phase.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct EchoCounts {
    pub received: u64,
    pub echoed: u64,
}

/// What the echo saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EchoReport {
    pub bind: String,
    /// Per phase number (from the stamps).
    pub phases: BTreeMap<u8, EchoCounts>,
    /// Datagrams without a stamp (echoed all the same).
    pub unstamped: u64,
    pub send_errors: u64,
    pub seconds: f64,
}

/// Binds the echo's socket (before anything is sent to it).
pub fn bind(spec: &EchoSpec) -> Result<Socket, BenchError> {
    let socket = Socket::new(
        Domain::for_address(spec.bind),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.bind(&spec.bind.into())?;
    tune_socket(&socket, 8 << 20)?;
    Ok(socket)
}

/// Echoes until `stop` is set or the time is up.
pub fn run(spec: &EchoSpec, socket: &Socket, stop: &AtomicBool) -> Result<EchoReport, BenchError> {
    let started = Instant::now();
    let mut batch = Batch::new(spec.batch.clamp(1, 1024), 2048);
    let mut report = EchoReport {
        bind: spec.bind.to_string(),
        ..EchoReport::default()
    };
    while !stop.load(Ordering::Relaxed) && started.elapsed() < spec.max_duration {
        let n = match batch.recv_wait(socket.as_fd()) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            continue;
        }
        let mut phases: [(u8, u64); 4] = [(0, 0); 4];
        for i in 0..n {
            match Stamp::find(batch.received(i)) {
                Some(stamp) => {
                    // Consecutive datagrams are nearly always of one phase: count locally.
                    match phases
                        .iter_mut()
                        .find(|(p, c)| *p == stamp.phase || *c == 0)
                    {
                        Some(slot) => {
                            slot.0 = stamp.phase;
                            slot.1 += 1;
                        }
                        None => {
                            report.phases.entry(stamp.phase).or_default().received += 1;
                        }
                    }
                }
                None => report.unstamped += 1,
            }
        }
        let echoed = batch.send_back(socket.as_fd(), n).unwrap_or_default();
        report.send_errors += (n - echoed.min(n)) as u64;
        // Attribute what went back to the phases in order (a short send is rare).
        let mut left = echoed as u64;
        for (phase, count) in phases.iter().filter(|(_, c)| *c > 0) {
            let entry = report.phases.entry(*phase).or_default();
            entry.received += count;
            let back = left.min(*count);
            entry.echoed += back;
            left -= back;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

impl EchoReport {
    /// Adds `other` (another port's echo) to this one.
    pub fn merge(&mut self, other: EchoReport) {
        for (phase, counts) in other.phases {
            let entry = self.phases.entry(phase).or_default();
            entry.received += counts.received;
            entry.echoed += counts.echoed;
        }
        self.unstamped += other.unstamped;
        self.send_errors += other.send_errors;
        self.seconds = self.seconds.max(other.seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{CHANNEL, fill_channel_data};
    use std::sync::Arc;

    #[test]
    fn echoes_and_counts_per_phase() {
        let spec = EchoSpec {
            bind: "127.0.0.1:0".parse().expect("addr"),
            batch: 16,
            max_duration: Duration::from_secs(10),
        };
        let socket = bind(&spec).expect("bind");
        let addr = socket
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || run(&spec, &socket, &stop))
        };
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("client");
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 256];
        for (phase, count) in [(2u8, 3u64), (5, 2)] {
            for seq in 0..count {
                let stamp = Stamp {
                    phase,
                    seq,
                    sent_ns: 1,
                };
                // Bare payloads and ChannelData are both understood.
                let n = if seq % 2 == 0 {
                    stamp.write(&mut buf[..100]);
                    100
                } else {
                    fill_channel_data(&mut buf, CHANNEL, 100, stamp)
                };
                client.send_to(&buf[..n], addr).expect("send");
                let mut back = [0u8; 256];
                let (m, _) = client.recv_from(&mut back).expect("echo");
                assert_eq!(&back[..m], &buf[..n]);
            }
        }
        client.send_to(b"hello", addr).expect("send");
        let mut back = [0u8; 16];
        let (m, _) = client.recv_from(&mut back).expect("echo");
        assert_eq!(&back[..m], b"hello");
        stop.store(true, Ordering::Relaxed);
        let report = thread.join().expect("thread").expect("echo");
        assert_eq!(
            report.phases.get(&2),
            Some(&EchoCounts {
                received: 3,
                echoed: 3
            })
        );
        assert_eq!(
            report.phases.get(&5),
            Some(&EchoCounts {
                received: 2,
                echoed: 2
            })
        );
        assert_eq!(report.unstamped, 1);
    }

    #[test]
    fn reports_of_several_ports_add_up() {
        let mut a = EchoReport {
            bind: "a".into(),
            unstamped: 1,
            seconds: 2.0,
            ..EchoReport::default()
        };
        a.phases.insert(
            1,
            EchoCounts {
                received: 5,
                echoed: 4,
            },
        );
        let mut b = EchoReport {
            send_errors: 2,
            seconds: 3.0,
            ..EchoReport::default()
        };
        b.phases.insert(
            1,
            EchoCounts {
                received: 1,
                echoed: 1,
            },
        );
        b.phases.insert(
            2,
            EchoCounts {
                received: 7,
                echoed: 7,
            },
        );
        a.merge(b);
        assert_eq!(
            a.phases[&1],
            EchoCounts {
                received: 6,
                echoed: 5
            }
        );
        assert_eq!(
            a.phases[&2],
            EchoCounts {
                received: 7,
                echoed: 7
            }
        );
        assert_eq!((a.unstamped, a.send_errors, a.seconds), (1, 2, 3.0));
    }
}
