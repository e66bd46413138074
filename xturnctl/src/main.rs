//! `xturnctl`: a TURN client and test tools for xturn. See docs/xturnctl.md.
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::net::UdpSocket;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};
use xturnctl::logging;
use xturnctl::ping::{EchoOutcome, MAX_PAYLOAD_LEN, PAYLOAD_HEADER_LEN, PingTracker};
use xturnctl::{
    AllocateOptions, Allocation, ClientConfig, ClientCredentials, ClientError, Family,
    RetransmitPolicy, TurnClient, rest_credentials,
};

/// The channel `xturnctl ping --mode channel` binds.
const PING_CHANNEL: u16 = 0x4000;
/// How often a long ping refreshes its allocation, permission and channel binding.
const PING_REFRESH_EVERY: Duration = Duration::from_secs(120);
/// The LIFETIME a long ping asks for when refreshing.
const PING_LIFETIME: Duration = Duration::from_secs(600);

/// Exit code: ping lost more than --max-loss.
const EXIT_LOSS: u8 = 1;
/// Exit code: any other failure (bad arguments, no server, an error response...).
const EXIT_ERROR: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "xturnctl",
    version,
    about = "TURN client and test tools for xturn",
    after_help = "Exit codes: 0 success; 1 ping lost more than --max-loss; 2 any other error."
)]
struct Cli {
    /// Log filter for stderr (tracing EnvFilter syntax, e.g. debug or xturnctl=trace);
    /// RUST_LOG overrides it.
    #[arg(long, global = true, value_name = "FILTER", default_value = "warn")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Allocate, send datagrams through the relay to an echo peer, check the echoes.
    Ping(PingArgs),
    /// Allocate a relayed address, print it, optionally hold it (refreshing), then delete it.
    Allocate(AllocateArgs),
    /// Print TURN REST API credentials derived from a shared secret.
    Credentials(CredentialsArgs),
    /// Run a UDP echo peer: every datagram goes back to its sender.
    Echo(EchoArgs),
    /// STUN Binding request: print the mapped (server-reflexive) address.
    Binding(BindingArgs),
}

/// The server and how to authenticate to it.
#[derive(Args, Debug)]
struct ServerArgs {
    /// TURN server address, e.g. 127.0.0.1:3478 or [::1]:3478.
    #[arg(long, value_name = "ADDR:PORT")]
    server: SocketAddr,
    /// Long-term credentials, split at the last ':' (so REST API usernames work); with
    /// --password, the whole value is the username.
    #[arg(long, value_name = "NAME:PASS", conflicts_with = "secret")]
    user: Option<String>,
    /// Password for --user.
    #[arg(long, value_name = "PASS", requires = "user")]
    password: Option<String>,
    /// TURN REST API shared secret: username "EXPIRES:ID", password base64(HMAC-SHA1).
    #[arg(long, value_name = "S")]
    secret: Option<String>,
    /// REST API user id (with --secret).
    #[arg(long, value_name = "ID", default_value = "xturnctl")]
    user_id: String,
    /// REST API credential lifetime in seconds from now (with --secret).
    #[arg(long, value_name = "SECS", default_value_t = 86_400)]
    ttl: u64,
    /// Give up on a request after this long; requests are retransmitted after 0.5, 1.5,
    /// 3.5, 7.5... seconds (RFC 8489), at most 7 times.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    request_timeout_ms: u64,
}

impl ServerArgs {
    fn credentials(&self, required: bool) -> Result<ClientCredentials> {
        if let Some(user) = &self.user {
            if let Some(password) = &self.password {
                return Ok(ClientCredentials::new(user, password));
            }
            let Some((name, password)) = user.rsplit_once(':') else {
                bail!("--user must be NAME:PASS (or give --password)");
            };
            return Ok(ClientCredentials::new(name, password));
        }
        if let Some(secret) = &self.secret {
            let expires = unix_now()?.saturating_add(self.ttl);
            return Ok(ClientCredentials::rest(secret, &self.user_id, expires));
        }
        if required {
            bail!("credentials needed: give --user NAME:PASS or --secret S");
        }
        Ok(ClientCredentials::anonymous())
    }

    async fn connect(&self, required: bool) -> Result<TurnClient> {
        let creds = self.credentials(required)?;
        let config = ClientConfig {
            retransmit: RetransmitPolicy::with_budget(Duration::from_millis(
                self.request_timeout_ms,
            )),
            software: Some(concat!("xturnctl/", env!("CARGO_PKG_VERSION")).to_owned()),
            ..ClientConfig::default()
        };
        TurnClient::connect_with(self.server, creds, config)
            .await
            .with_context(|| format!("cannot open a socket to {}", self.server))
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// ChannelBind channel 0x4000 and send ChannelData.
    Channel,
    /// Send indications (the echoes come back as Data indications).
    Send,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum FamilyArg {
    Ipv4,
    Ipv6,
}

impl From<FamilyArg> for Family {
    fn from(f: FamilyArg) -> Family {
        match f {
            FamilyArg::Ipv4 => Family::V4,
            FamilyArg::Ipv6 => Family::V6,
        }
    }
}

#[derive(Args, Debug)]
struct PingArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The echo peer, as the relay reaches it.
    #[arg(long, value_name = "ADDR:PORT")]
    peer: SocketAddr,
    /// Datagrams to send.
    #[arg(long, value_name = "N", default_value_t = 10)]
    count: u64,
    /// Payload bytes per datagram (20 to 65000).
    #[arg(long, value_name = "BYTES", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(PAYLOAD_HEADER_LEN as u64..=MAX_PAYLOAD_LEN as u64))]
    size: u64,
    /// Time between sends (0: as fast as possible).
    #[arg(long, value_name = "MS", default_value_t = 10)]
    interval_ms: u64,
    /// How datagrams go through the relay.
    #[arg(long, value_enum, default_value_t = Mode::Channel)]
    mode: Mode,
    /// Relayed address family to request (default: the peer's).
    #[arg(long, value_enum)]
    family: Option<FamilyArg>,
    /// After the last send, wait this long for missing echoes.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    timeout_ms: u64,
    /// Lost datagrams tolerated (exit code 1 beyond that).
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_loss: u64,
    /// Stop sending after this long even if --count is not reached.
    #[arg(long, value_name = "S", default_value_t = 60)]
    max_secs: u64,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct AllocateArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Relayed address family to request.
    #[arg(long, value_enum, default_value_t = FamilyArg::Ipv4)]
    family: FamilyArg,
    /// LIFETIME to request, in seconds (default: the server's choice).
    #[arg(long, value_name = "SECS")]
    lifetime: Option<u64>,
    /// Keep the allocation this long, refreshing it, before deleting it (SIGINT/SIGTERM end
    /// the hold early).
    #[arg(long, value_name = "S")]
    hold_secs: Option<u64>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct CredentialsArgs {
    /// The shared secret.
    #[arg(long, value_name = "S")]
    secret: String,
    /// The user id (after the expiry time in the username).
    #[arg(long, value_name = "ID")]
    user_id: String,
    /// Validity in seconds from now.
    #[arg(long, value_name = "SECS", default_value_t = 86_400)]
    ttl: u64,
}

#[derive(Args, Debug)]
struct EchoArgs {
    /// Address to listen on, e.g. 0.0.0.0:3480 or [::]:3480 (port 0: any).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// Exit after this many seconds (default: run until SIGTERM/SIGINT).
    #[arg(long, value_name = "S")]
    max_secs: Option<u64>,
}

#[derive(Args, Debug)]
struct BindingArgs {
    /// Credentials are optional: they are used only if the server challenges.
    #[command(flatten)]
    server: ServerArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(&cli.log_level) {
        eprintln!("xturnctl: {e}");
        return ExitCode::from(EXIT_ERROR);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = runtime
        .context("cannot start the tokio runtime")
        .and_then(|rt| rt.block_on(run(cli.command)));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xturnctl: error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Ping(args) => ping(args).await,
        Command::Allocate(args) => allocate(args).await.map(|()| ExitCode::SUCCESS),
        Command::Credentials(args) => credentials(&args).map(|()| ExitCode::SUCCESS),
        Command::Echo(args) => echo(args).await.map(|()| ExitCode::SUCCESS),
        Command::Binding(args) => binding(args).await.map(|()| ExitCode::SUCCESS),
    }
}

fn unix_now() -> Result<u64> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs())
}

fn print_line(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("cannot write to stdout")?;
    out.flush().context("cannot write to stdout")
}

fn credentials(args: &CredentialsArgs) -> Result<()> {
    let expires = unix_now()?.saturating_add(args.ttl);
    let (username, password) = rest_credentials(&args.secret, &args.user_id, expires);
    print_line(&format!("username={username}\npassword={password}"))
}

async fn binding(args: BindingArgs) -> Result<()> {
    let mut client = args.server.connect(false).await?;
    let mapped = client.binding().await.context("Binding")?;
    print_line(&format!("mapped={mapped}"))
}

/// Deletes the allocation, logging (not failing) if the server refuses.
async fn delete(client: &mut TurnClient) {
    match client.delete().await {
        Ok(()) => info!("allocation deleted"),
        Err(e) => warn!("deleting the allocation failed: {e}"),
    }
}

async fn allocate(args: AllocateArgs) -> Result<()> {
    let mut client = args.server.connect(true).await?;
    let opts = AllocateOptions {
        lifetime: args.lifetime.map(Duration::from_secs),
        ..AllocateOptions::family(args.family.into())
    };
    let opts_lifetime = opts.lifetime;
    let allocation = client.allocate(opts).await.context("Allocate")?;
    let printed = print_allocation(&allocation, args.json);
    let held = match (printed, args.hold_secs) {
        (Ok(()), Some(secs)) => {
            let lifetime = opts_lifetime.unwrap_or(allocation.lifetime);
            hold(
                &mut client,
                lifetime,
                allocation.lifetime,
                Duration::from_secs(secs),
            )
            .await
        }
        (result, _) => result,
    };
    delete(&mut client).await;
    held
}

fn print_allocation(allocation: &Allocation, json: bool) -> Result<()> {
    let (relayed, mapped) = (allocation.relayed, allocation.mapped);
    let lifetime = allocation.lifetime.as_secs();
    if json {
        print_line(&format!(
            "{{\"relayed\":\"{relayed}\",\"mapped\":\"{mapped}\",\"lifetime\":{lifetime}}}"
        ))
    } else {
        print_line(&format!(
            "relayed={relayed} mapped={mapped} lifetime={lifetime}"
        ))
    }
}

/// Refresh period for a granted lifetime: half of it, at least a second.
fn refresh_period(lifetime: Duration) -> Duration {
    (lifetime / 2).max(Duration::from_secs(1))
}

/// Keeps the allocation for `hold`, refreshing it with `request` (LIFETIME) at half the granted
/// lifetime; SIGINT or SIGTERM end it early.
async fn hold(
    client: &mut TurnClient,
    request: Duration,
    granted: Duration,
    hold: Duration,
) -> Result<()> {
    let end = Instant::now() + hold;
    let mut lifetime = granted;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let next_refresh = Instant::now() + refresh_period(lifetime);
        if next_refresh >= end {
            tokio::select! {
                _ = sleep_until(end) => return Ok(()),
                _ = &mut ctrl_c => return Ok(()),
                _ = sigterm.recv() => return Ok(()),
            }
        }
        tokio::select! {
            _ = sleep_until(next_refresh) => {}
            _ = &mut ctrl_c => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        }
        lifetime = client.refresh(request).await.context("Refresh")?;
        info!(lifetime = lifetime.as_secs(), "allocation refreshed");
    }
}

async fn ping(args: PingArgs) -> Result<ExitCode> {
    let mut client = args.server.connect(true).await?;
    let family = args.family.map_or(Family::of(args.peer.ip()), Family::from);
    if family != Family::of(args.peer.ip()) {
        warn!(%family, peer = %args.peer, "the peer is not of the relayed family: expect 443");
    }
    let allocation = client
        .allocate(AllocateOptions::family(family))
        .await
        .context("Allocate")?;
    let result = ping_relayed(&mut client, &args).await;
    delete(&mut client).await;
    let (summary, interrupted) = result?;

    let relayed = allocation.relayed.to_string();
    let mapped = allocation.mapped.to_string();
    let ok = summary.lost <= args.max_loss;
    let mode = match args.mode {
        Mode::Channel => "channel",
        Mode::Send => "send",
    };
    if args.json {
        print_line(&summary.json(&relayed, &mapped, mode, ok))?;
    } else {
        print_line(&summary.line(&relayed, &mapped))?;
    }
    if summary.sent < args.count {
        let why = if interrupted {
            "interrupted"
        } else {
            "--max-secs reached"
        };
        eprintln!(
            "xturnctl: sent {} of {} datagrams ({why})",
            summary.sent, args.count
        );
    }
    if ok {
        return Ok(ExitCode::SUCCESS);
    }
    let corrupted = if summary.corrupted > 0 {
        format!(", {} corrupted echo(es) counted as lost", summary.corrupted)
    } else {
        String::new()
    };
    eprintln!(
        "xturnctl: ping failed: {} of {} datagrams lost{corrupted} (--max-loss {})",
        summary.lost, summary.sent, args.max_loss
    );
    Ok(ExitCode::from(EXIT_LOSS))
}

/// Permission, channel, then the send/receive loop. Returns the summary and whether SIGINT or
/// SIGTERM cut it short.
async fn ping_relayed(
    client: &mut TurnClient,
    args: &PingArgs,
) -> Result<(xturnctl::ping::Summary, bool)> {
    let peer = args.peer;
    let channel = args.mode == Mode::Channel;
    client
        .create_permission(&[peer.ip()])
        .await
        .context("CreatePermission")?;
    if channel {
        client
            .channel_bind(peer, PING_CHANNEL)
            .await
            .context("ChannelBind")?;
    }
    let size = usize::try_from(args.size).context("--size")?;
    let mut tracker = PingTracker::new(size).context("--size is shorter than the header")?;
    let interval = Duration::from_millis(args.interval_ms);
    let echo_wait = Duration::from_millis(args.timeout_ms);
    let start = Instant::now();
    let send_until = start + Duration::from_secs(args.max_secs);
    let mut next_send = start;
    let mut next_refresh = start + PING_REFRESH_EVERY;
    let mut sending_ended: Option<Instant> = None;
    let mut interrupted = false;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let micros =
        |at: Instant| u64::try_from(at.duration_since(start).as_micros()).unwrap_or(u64::MAX);

    loop {
        let now = Instant::now();
        let sending = !interrupted && tracker.sent() < args.count && now < send_until;
        let wake = if sending {
            next_send
        } else {
            let ended = *sending_ended.get_or_insert(now);
            if tracker.all_received() || interrupted || now >= ended + echo_wait {
                break;
            }
            ended + echo_wait
        };
        if now >= next_refresh {
            refresh_all(client, peer, channel).await?;
            next_refresh = Instant::now() + PING_REFRESH_EVERY;
        }
        tokio::select! {
            biased;
            received = client.recv_timeout(Duration::from_secs(3600)) => {
                let received = match received {
                    Ok(received) => received,
                    Err(ClientError::RecvTimeout(_)) => continue,
                    Err(e) => return Err(e).context("receiving"),
                };
                if received.peer != peer {
                    warn!(from = %received.peer, "ignoring a datagram from another peer");
                    continue;
                }
                match tracker.on_echo(&received.data, micros(Instant::now())) {
                    EchoOutcome::Valid { seq, rtt_us } => debug!(seq, rtt_us, via = ?received.via, "echo"),
                    EchoOutcome::Duplicate { seq } => warn!(seq, "duplicate echo"),
                    EchoOutcome::Corrupted { seq } => warn!(?seq, len = received.data.len(), "corrupted echo"),
                }
            }
            () = sleep_until(wake), if sending => {
                let payload = tracker.next_payload(micros(Instant::now()));
                if channel {
                    client.send_channel(PING_CHANNEL, &payload).await.context("sending ChannelData")?;
                } else {
                    client.send_indication(peer, &payload).await.context("sending a Send indication")?;
                }
                next_send += interval;
            }
            () = sleep_until(wake), if !sending => {}
            _ = &mut ctrl_c, if !interrupted => interrupted = true,
            _ = sigterm.recv(), if !interrupted => interrupted = true,
        }
    }
    Ok((tracker.summary(), interrupted))
}

/// Keeps a long ping's state alive: allocation, permission, channel binding.
async fn refresh_all(client: &mut TurnClient, peer: SocketAddr, channel: bool) -> Result<()> {
    client.refresh(PING_LIFETIME).await.context("Refresh")?;
    client
        .create_permission(&[peer.ip()])
        .await
        .context("CreatePermission (refresh)")?;
    if channel {
        client
            .channel_bind(peer, PING_CHANNEL)
            .await
            .context("ChannelBind (refresh)")?;
    }
    info!("allocation, permission and channel refreshed");
    Ok(())
}

async fn echo(args: EchoArgs) -> Result<()> {
    let socket = UdpSocket::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    print_line(&format!("listening={}", socket.local_addr()?))?;
    let deadline = args
        .max_secs
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut buf = vec![0u8; 65_536];
    let mut echoed: u64 = 0;
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => match socket.send_to(&buf[..n], from).await {
                    Ok(_) => echoed += 1,
                    Err(e) => debug!(%from, "echo send failed: {e}"),
                },
                Err(e) => debug!("receive failed: {e}"),
            },
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => break,
            _ = &mut ctrl_c => break,
            _ = sigterm.recv() => break,
        }
    }
    print_line(&format!("echoed={echoed}"))
}
