//! `xturn-operator`: the controller (`run`), its CRDs (`crds`), offline rendering (`render`)
//! and an offline credential service (`auth-service`). See docs/operator.md.
use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use k8s_openapi::jiff::Timestamp;
use xturn_operator::{crd, ice, inputs::Inputs, install, leader, offline, reconcile, render};

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
    /// Run the controller in a cluster (in-cluster config or KUBECONFIG).
    Run {
        /// Where `/healthz` answers (for probes).
        #[arg(long, default_value = "0.0.0.0:8081")]
        health_listen: SocketAddr,
        /// Also serve the credential service here (its `/healthz` too).
        #[arg(long)]
        auth_listen: Option<SocketAddr>,
        /// Reconcile only while holding the Lease `xturn-operator` in `$POD_NAMESPACE`
        /// (default `xturn-system`), as `$POD_NAME` (default: the host name), so that several
        /// replicas can run.
        #[arg(long, env = "XTURN_LEADER_ELECT")]
        leader_elect: bool,
    },
    /// Serve the credential service for every Gateway in the cluster (read-only).
    CredentialService {
        #[arg(long, default_value = "0.0.0.0:8088")]
        listen: SocketAddr,
    },
    /// Print every object that runs the operator (CRDs, RBAC, Deployments, Services), naming
    /// the images `cargo xtask image` builds (what deploy/install.yaml holds).
    Install {
        /// Where the images are (`REGISTRY/xturn-operator:TAG`, `REGISTRY/xturnd:TAG`).
        #[arg(long, default_value = install::DEFAULT_REGISTRY)]
        registry: String,
        /// The images' tag. Default: this operator's version.
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        tag: String,
        /// A Secret in xturn-system for pulling the images from a private registry
        /// (repeatable).
        #[arg(long = "image-pull-secret")]
        image_pull_secrets: Vec<String>,
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
        Command::Install {
            registry,
            tag,
            image_pull_secrets,
        } => {
            let options = install::InstallOptions {
                registry: registry.clone(),
                tag: tag.clone(),
                image_pull_secrets: image_pull_secrets.clone(),
            };
            print!("{}", install::yaml(&options)?);
        }
        Command::CredentialService { listen } => {
            runtime()?.block_on(async {
                let client = kube_client().await?;
                let registry: ice::Registry = Arc::default();
                let (addr, serving) = ice::serve(*listen, Arc::clone(&registry)).await?;
                tracing::info!(%addr, "credential service listening");
                let (caches, changes) =
                    reconcile::start_caches(&client, &args.controller_names).await?;
                let refresh = reconcile::refresh_registry(
                    caches,
                    changes,
                    args.controller_names.clone(),
                    registry,
                );
                tokio::select! {
                    () = refresh => {}
                    result = serving => result??,
                    _ = tokio::signal::ctrl_c() => {}
                }
                anyhow::Ok(())
            })?;
        }
        Command::Run {
            health_listen,
            auth_listen,
            leader_elect,
        } => {
            runtime()?.block_on(async {
                let client = kube_client().await?;
                let registry: ice::Registry = Arc::default();
                let (addr, health) = ice::serve_health(*health_listen).await?;
                tracing::info!(%addr, "health checks listening");
                let auth = match auth_listen {
                    Some(listen) => {
                        let (addr, task) = ice::serve(*listen, Arc::clone(&registry)).await?;
                        tracing::info!(%addr, "credential service listening");
                        Some(task)
                    }
                    None => None,
                };
                let (caches, changes) = reconcile::start_caches(&client, &args.controller_names).await?;
                let refresh = tokio::spawn(reconcile::refresh_registry(
                    Arc::clone(&caches),
                    changes.clone(),
                    args.controller_names.clone(),
                    Arc::clone(&registry),
                ));
                let controllers = {
                    let (client, names, image) = (
                        client.clone(),
                        args.controller_names.clone(),
                        args.agent_image.clone(),
                    );
                    move || {
                        reconcile::run_controllers(
                            client.clone(),
                            Arc::clone(&caches),
                            changes.clone(),
                            names.clone(),
                            image.clone(),
                            Arc::clone(&registry),
                        )
                    }
                };
                let control = async {
                    if *leader_elect {
                        let namespace = std::env::var("POD_NAMESPACE")
                            .unwrap_or_else(|_| install::NAMESPACE.to_owned());
                        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
                            nix_hostname().unwrap_or_else(|| "xturn-operator".to_owned())
                        });
                        tracing::info!(%namespace, %identity, lease = leader::LEASE_NAME, "leader election");
                        let lease = leader::KubeLease::new(client.clone(), &namespace, identity);
                        leader::lead_while_elected(lease, controllers).await;
                    } else {
                        controllers().await;
                    }
                };
                tokio::select! {
                    () = control => {}
                    result = health => result??,
                    Some(result) = async { match auth { Some(task) => Some(task.await), None => None } } => result??,
                }
                refresh.abort();
                anyhow::Ok(())
            })?;
        }
    }
    Ok(())
}

async fn kube_client() -> Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")
}

/// This host's name (a pod's name, when `POD_NAME` is not given).
fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}
