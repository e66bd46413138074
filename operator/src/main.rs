//! `xturn-operator`: the controller (`run`), its CRDs (`crds`), offline rendering (`render`)
//! and an offline credential service (`auth-service`). See docs/operator.md.
use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use k8s_openapi::jiff::Timestamp;
use xturn_operator::{crd, ice, inputs::Inputs, offline, reconcile, render};

#[derive(Parser)]
#[command(
    name = "xturn-operator",
    version,
    about = "Turns Gateway API resources into configured xturn relays"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// The GatewayClass controllerNames this operator serves (repeat the flag or separate with
    /// commas). Default: ours and STUNner's.
    #[arg(
        long = "controller-name",
        global = true,
        env = "XTURN_CONTROLLER_NAME",
        value_delimiter = ',',
        default_values_t = render::DEFAULT_CONTROLLER_NAMES.map(str::to_owned)
    )]
    controller_names: Vec<String>,
    /// The xturnd image for Dataplanes that name none.
    #[arg(
        long,
        global = true,
        env = "XTURN_AGENT_IMAGE",
        default_value = "ghcr.io/xturn/xturnd:latest"
    )]
    agent_image: String,
    /// A tracing filter (`info`, `xturn_operator=debug`).
    #[arg(long, global = true, env = "XTURN_LOG", default_value = "info")]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller and the credential service in a cluster (in-cluster config or
    /// KUBECONFIG).
    Run {
        /// Where the credential service listens.
        #[arg(long, default_value = "0.0.0.0:8088")]
        auth_listen: SocketAddr,
    },
    /// Print the CustomResourceDefinitions (YAML).
    Crds,
    /// Render, without a cluster, every object the operator would create for the Gateways in
    /// the manifests. Objects go to stdout (YAML), conditions to stderr.
    Render {
        /// Manifest files (multi-document YAML).
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
    /// Serve the credential service for the Gateways in the manifests, without a cluster.
    AuthService {
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        #[arg(long, default_value = "0.0.0.0:8088")]
        listen: SocketAddr,
        /// The address clients reach a Gateway at when it has none (no LoadBalancer here).
        #[arg(long)]
        public_address: Option<String>,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log_level)?)
        .with_writer(std::io::stderr)
        .init();
    let settings = || render::Settings {
        controller_names: args.controller_names.clone(),
        agent_image: args.agent_image.clone(),
        now: Timestamp::now(),
    };
    match &args.command {
        Command::Crds => print!("{}", crd::yaml()?),
        Command::Render { files } => {
            let (inputs, skipped) = Inputs::from_files(files)?;
            for s in skipped {
                eprintln!("# skipped (not an input): {s}");
            }
            let out = offline::render_all(&inputs, &settings(), None)?;
            for line in &out.report {
                eprintln!("# {line}");
            }
            print!("{}", offline::to_yaml(&out.objects)?);
        }
        Command::AuthService {
            files,
            listen,
            public_address,
        } => {
            let (inputs, _) = Inputs::from_files(files)?;
            let out = offline::render_all(&inputs, &settings(), public_address.as_deref())?;
            let registry: ice::Registry = Arc::default();
            if let Ok(mut map) = registry.write() {
                for source in out.ice {
                    map.insert((source.namespace.clone(), source.gateway.clone()), source);
                }
            }
            runtime()?.block_on(async {
                let (addr, task) = ice::serve(*listen, registry).await?;
                tracing::info!(%addr, "credential service listening");
                task.await??;
                anyhow::Ok(())
            })?;
        }
        Command::Run { auth_listen } => {
            runtime()?.block_on(async {
                let client = kube::Client::try_default()
                    .await
                    .context("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")?;
                let registry: ice::Registry = Arc::default();
                let (addr, auth) = ice::serve(*auth_listen, Arc::clone(&registry)).await?;
                tracing::info!(%addr, "credential service listening");
                let controller = reconcile::run(
                    client,
                    args.controller_names.clone(),
                    args.agent_image.clone(),
                    registry,
                );
                tokio::select! {
                    result = controller => result?,
                    result = auth => result??,
                }
                anyhow::Ok(())
            })?;
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}
