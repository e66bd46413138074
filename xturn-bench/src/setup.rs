//! Requests of many clients driven from one thread, for the setup rate: every client's socket in
//! one epoll set, each request a sans-IO [`Transaction`] (turn-proto's client: the 401
//! challenge, signing, retransmission on RFC 8489's schedule), no task or timer per client.
//!
//! The setup round measures how many Allocates per second the relay completes, which takes a
//! generator cheaper per Allocate than the relay. One tokio task per client, each with its own
//! timer, cost the generator more CPU per Allocate than xturnd on a core of the same size, so the
//! round measured the generator. Here a client costs its two requests' encoding, their two
//! responses' decoding and the system calls to send and receive them.
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use turn_proto::client::message::{self, Request, TransactionId};
use turn_proto::client::{AuthState, RetransmitPolicy, Step, Transaction};
use turn_proto::wire::StunFrame;
use xturnctl::ClientCredentials;

use super::BenchError;

/// What one client's request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not sent yet, or no answer yet.
    Pending,
    Done,
    Failed(String),
}

/// One client: its socket (connected to the server), what it learnt from the server (realm,
/// nonce, key) and the request in progress.
pub struct Client {
    socket: UdpSocket,
    auth: AuthState,
    request: Option<InFlight>,
    pub outcome: Outcome,
}

struct InFlight {
    transaction: Transaction,
    /// When the current STUN transaction was first sent, and how many times so far.
    started: Instant,
    sends: usize,
}

impl Client {
    /// A client on a fresh port of `local_ip` (any address when `None`), connected to `server`.
    pub fn open(
        server: SocketAddr,
        local_ip: Option<IpAddr>,
        creds: ClientCredentials,
    ) -> Result<Client, BenchError> {
        let local = local_ip.unwrap_or(match server {
            SocketAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
            SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
        });
        let socket = UdpSocket::bind(SocketAddr::new(local, 0))?;
        socket.connect(server)?;
        socket.set_nonblocking(true)?;
        Ok(Client {
            socket,
            auth: AuthState::new(creds),
            request: None,
            outcome: Outcome::Pending,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, BenchError> {
        Ok(self.socket.local_addr()?)
    }
}

/// Clients registered in one epoll set, ready to run requests.
pub struct Clients {
    clients: Vec<Client>,
    epoll: OwnedFd,
    policy: RetransmitPolicy,
    /// Requests sent again because no answer came in time, over every [`Clients::run`].
    pub retransmissions: u64,
}

/// Most events taken from the epoll set per wait.
const EVENTS: usize = 256;
/// How often in-flight requests are checked for a due retransmission.
const TICK: Duration = Duration::from_millis(10);
/// Largest response read.
const MAX_RESPONSE: usize = 1500;

impl Clients {
    /// Registers `clients` (done before any clock starts: it is the generator's set-up).
    pub fn new(clients: Vec<Client>, policy: RetransmitPolicy) -> Result<Clients, BenchError> {
        let epoll = super::epoll_set(clients.iter().map(|c| c.socket.as_raw_fd()))?;
        Ok(Clients {
            clients,
            epoll,
            policy,
            retransmissions: 0,
        })
    }

    pub fn clients(&self) -> &[Client] {
        &self.clients
    }

    /// How many clients' last request came to `outcome`.
    pub fn count(&self, outcome: &Outcome) -> usize {
        self.clients
            .iter()
            .filter(|c| &c.outcome == outcome)
            .count()
    }

    /// The first failure among the clients, in client order.
    pub fn first_error(&self) -> Option<String> {
        self.clients.iter().find_map(|c| match &c.outcome {
            Outcome::Failed(e) => Some(e.clone()),
            _ => None,
        })
    }

    /// Runs `request` on every client whose outcome is pending or done (a failed client is
    /// left alone), at most `concurrency` in flight, in order, until all are answered or
    /// `deadline` passes (the rest fail). Outcomes are in [`Client::outcome`].
    pub fn run(
        &mut self,
        request: &Request,
        concurrency: usize,
        software: Option<&str>,
        deadline: Instant,
    ) -> Result<(), BenchError> {
        let todo: Vec<usize> = (0..self.clients.len())
            .filter(|&i| !matches!(self.clients[i].outcome, Outcome::Failed(_)))
            .collect();
        for &i in &todo {
            self.clients[i].outcome = Outcome::Pending;
        }
        let offsets = self.policy.send_offsets();
        let give_up = self.policy.give_up_after();
        let mut in_flight: Vec<usize> = Vec::with_capacity(concurrency);
        let mut next = 0;
        let mut events: Vec<libc::epoll_event> =
            vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        let mut buf = vec![0u8; MAX_RESPONSE];
        let mut last_tick = Instant::now();
        loop {
            while in_flight.len() < concurrency.max(1) && next < todo.len() {
                let i = todo[next];
                next += 1;
                self.start(i, request.clone(), software);
                if self.clients[i].outcome == Outcome::Pending {
                    in_flight.push(i);
                }
            }
            if in_flight.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                for &i in &in_flight {
                    self.clients[i].outcome =
                        Outcome::Failed("no answer before the deadline".into());
                }
                return Ok(());
            }
            let wait = TICK.min(deadline - now);
            let n = self.wait(&mut events, wait)?;
            for event in &events[..n] {
                let Ok(i) = usize::try_from(event.u64) else {
                    continue;
                };
                self.receive(i, &mut buf, software);
            }
            let now = Instant::now();
            if now.duration_since(last_tick) >= TICK {
                last_tick = now;
                for &i in &in_flight {
                    self.retransmit_if_due(i, now, &offsets, give_up, software);
                }
            }
            in_flight.retain(|&i| self.clients[i].outcome == Outcome::Pending);
        }
    }

    fn wait(
        &self,
        events: &mut [libc::epoll_event],
        timeout: Duration,
    ) -> Result<usize, BenchError> {
        let ms = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: `events` is valid for `max` entries; the epoll descriptor is open.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), max, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e.into());
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn start(&mut self, i: usize, request: Request, software: Option<&str>) {
        let client = &mut self.clients[i];
        client.request = Some(InFlight {
            transaction: Transaction::new(request, new_tid()),
            started: Instant::now(),
            sends: 0,
        });
        send(client, software);
    }

    /// Reads what client `i`'s socket holds and feeds it to its request.
    fn receive(&mut self, i: usize, buf: &mut [u8], software: Option<&str>) {
        let Some(client) = self.clients.get_mut(i) else {
            return;
        };
        loop {
            let len = match client.socket.recv(buf) {
                Ok(len) => len,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // An ICMP error queued on the socket: the next retransmission tries again.
                Err(_) => return,
            };
            let raw = &buf[..len];
            let Some(flight) = client.request.as_mut() else {
                continue;
            };
            // Decoded as the server decodes requests; the transaction checks integrity on `raw`.
            let Some(decoded) = StunFrame::parse(raw).ok().and_then(|f| f.decode().ok()) else {
                continue;
            };
            match flight
                .transaction
                .on_message(&mut client.auth, decoded, raw)
            {
                Step::Ignore | Step::Discard => {}
                Step::Retry => {
                    flight.transaction.restart(new_tid());
                    flight.started = Instant::now();
                    flight.sends = 0;
                    send(client, software);
                }
                Step::Success(response) => {
                    client.outcome = match flight.transaction.request() {
                        Request::Allocate(_) => match message::allocation(&response) {
                            Ok(_) => Outcome::Done,
                            Err(e) => Outcome::Failed(e.to_string()),
                        },
                        _ => Outcome::Done,
                    };
                    client.request = None;
                    return;
                }
                Step::Failed(e) => {
                    client.outcome = Outcome::Failed(e.to_string());
                    client.request = None;
                    return;
                }
            }
        }
    }

    fn retransmit_if_due(
        &mut self,
        i: usize,
        now: Instant,
        offsets: &[Duration],
        give_up: Duration,
        software: Option<&str>,
    ) {
        let client = &mut self.clients[i];
        let Some(flight) = client.request.as_ref() else {
            return;
        };
        let elapsed = now.duration_since(flight.started);
        if let Some(&due) = offsets.get(flight.sends) {
            if elapsed >= due {
                self.retransmissions += 1;
                send(client, software);
            }
        } else if elapsed >= give_up {
            let error = flight
                .transaction
                .timeout_error(u32::try_from(flight.sends).unwrap_or(u32::MAX), elapsed);
            client.outcome = Outcome::Failed(error.to_string());
            client.request = None;
        }
    }
}

/// Sends the client's current attempt (again); a failure to encode fails the client, a failure
/// to send waits for the next retransmission.
fn send(client: &mut Client, software: Option<&str>) {
    let Some(flight) = client.request.as_mut() else {
        return;
    };
    match flight.transaction.encode(&client.auth, software) {
        Ok(bytes) => {
            flight.sends += 1;
            // A full buffer or a queued ICMP error: the next retransmission tries again.
            let _ = client.socket.send(&bytes);
        }
        Err(e) => {
            client.outcome = Outcome::Failed(e.to_string());
            client.request = None;
        }
    }
}

fn new_tid() -> TransactionId {
    TransactionId::new(rand::random::<[u8; 12]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in server on loopback that challenges the first Allocate of each client with a
    /// 401 and answers the signed one: every client ends `Done`, through the 401 round.
    #[test]
    fn clients_complete_the_challenge_round_against_a_server() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let addr = server.local_addr().unwrap();
        let creds = ClientCredentials::new("user", "pass");
        let clients: Vec<Client> = (0..8)
            .map(|_| Client::open(addr, None, creds.clone()).unwrap())
            .collect();
        let mut clients = Clients::new(clients, RetransmitPolicy::default()).unwrap();
        let handle = std::thread::spawn(move || stand_in_server(&server, 16));
        clients
            .run(
                &Request::Allocate(xturnctl::AllocateOptions::default()),
                3,
                None,
                Instant::now() + Duration::from_secs(10),
            )
            .unwrap();
        let answered = handle.join().unwrap();
        assert_eq!(answered, 16, "a 401 and a success per client");
        for client in clients.clients() {
            assert_eq!(client.outcome, Outcome::Done);
        }
    }

    /// Answers `count` requests: unsigned ones with a 401, signed ones with a success.
    fn stand_in_server(server: &UdpSocket, count: usize) -> usize {
        use stun_codec::{Message, MessageClass, MessageEncoder};
        use turn_proto::attributes::{
            Attribute, ErrorCode, Lifetime, Nonce, Realm, XorMappedAddress, XorRelayAddress,
        };
        let mut buf = [0u8; 1500];
        let mut answered = 0;
        while answered < count {
            let Ok((len, from)) = server.recv_from(&mut buf) else {
                break;
            };
            let request = message::decode_stun(&buf[..len]).unwrap();
            let signed = message::nonce(&request).is_some();
            let class = if signed {
                MessageClass::SuccessResponse
            } else {
                MessageClass::ErrorResponse
            };
            let mut response: Message<Attribute> =
                Message::new(class, request.method(), request.transaction_id());
            if signed {
                response.add_attribute(XorRelayAddress::new(from));
                response.add_attribute(XorMappedAddress::new(from));
                response.add_attribute(Lifetime::new(Duration::from_secs(600)).unwrap());
            } else {
                response.add_attribute(ErrorCode::new(401, "Unauthorized".into()).unwrap());
                response.add_attribute(Realm::new("realm".into()).unwrap());
                response.add_attribute(Nonce::new("nonce".into()).unwrap());
            }
            let bytes =
                bytecodec::EncodeExt::encode_into_bytes(&mut MessageEncoder::new(), response)
                    .unwrap();
            server.send_to(&bytes, from).unwrap();
            answered += 1;
        }
        answered
    }
}
