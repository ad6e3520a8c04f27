//! The long-running roles: `dev`, `master`, `agent`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use agora_agent::{AgentConfig, LinuxContainerizer, ProcessContainerizer};
use agora_master::MasterConfig;
use agora_proto::Resources;
use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{AgentFlags, MasterFlags};

/// Logs to stderr as text or JSON lines, filtered by `AGORA_LOG` or
/// `RUST_LOG` (default `info`).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGORA_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Resolves on Ctrl-C or SIGTERM.
async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn master_config(flags: &MasterFlags) -> anyhow::Result<MasterConfig> {
    Ok(MasterConfig {
        agent_timeout: flags.agent_timeout,
        offer_timeout: flags.offer_timeout,
        allocation_interval: flags.allocation_interval,
        role_weights: agora_master::config::parse_weights(&flags.weights)?,
        offer_policy: flags.offer_policy,
        agent_removal_timeout: flags.agent_removal_timeout,
        max_agent_heartbeats_per_second: {
            let h = flags.max_agent_heartbeats_per_second;
            anyhow::ensure!(
                h.is_finite() && h >= 1.0,
                "--max-agent-heartbeats-per-second: must be at least 1, got {h}"
            );
            h
        },
        serve: agora_master::ServeLimits {
            max_connections: flags.max_connections.max(1),
            max_connections_per_ip: flags.max_connections_per_ip.max(1),
            header_read_timeout: flags.header_read_timeout,
        },
        relay_timeout: flags.relay_timeout,
        ..MasterConfig::default()
    })
}

fn agent_config(
    master: String,
    data_dir: PathBuf,
    flags: &AgentFlags,
) -> anyhow::Result<AgentConfig> {
    let mut config = AgentConfig::new(master, data_dir);
    if let Some(text) = &flags.resources {
        config.resources = Some(Resources::parse(text).context("--resources")?);
    }
    config.default_task_user = flags.default_task_user.clone();
    config.allow_root_tasks = flags.allow_root_tasks;
    config.attributes = agora_agent::parse_attributes(&flags.attributes)?;
    if let Some(hostname) = &flags.hostname {
        config.hostname = hostname.clone();
    }
    config.status_retry_interval = flags.status_retry;
    config.recover_cleanup = flags.recover == "cleanup";
    config.sandbox_gc = flags.sandbox_gc;
    config.disk_watch_interval = (!flags.no_disk_limit).then_some(flags.disk_watch_interval);
    Ok(config)
}

/// Runs the agent with the containerizer the flags ask for.
async fn run_agent(
    config: AgentConfig,
    flags: &AgentFlags,
    http: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if flags.containerizer == "process" {
        agora_agent::run(config, ProcessContainerizer, Some(http), shutdown).await?;
        return Ok(());
    }
    let cgroups = agora_agent::cgroups::detect(&flags.cgroup_root)?;
    let agora = std::env::current_exe().context("finding the agora binary for container init")?;
    // The small `agora-init` beside this binary if it is there, else ourselves.
    let small = agora.with_file_name("agora-init");
    let init = if small.is_file() {
        vec![small.into_os_string()]
    } else {
        vec![agora.into_os_string(), "container-init".into()]
    };
    let containerizer = LinuxContainerizer::new(cgroups, init, &config.data_dir, flags.cpu_hard_limit, flags.pids_limit)
        .context("setting up the Linux containerizer (needs root and a cgroup filesystem; --containerizer process runs without)")?;
    tracing::info!(
        cgroups = containerizer.cgroup_version(),
        "containerizer: linux"
    );
    agora_agent::run(config, containerizer, Some(http), shutdown).await?;
    Ok(())
}

/// Binds the master's port, refusing plaintext off loopback without
/// `insecure`, and prints where it listens.
async fn bind(listen: &str, tls: bool, insecure: bool) -> anyhow::Result<(TcpListener, String)> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    refuse_plaintext_off_loopback(&listener, tls, insecure)?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let scheme = if tls { "https" } else { "http" };
    // Printed on stdout so that scripts (and tests) can find an ephemeral port.
    println!("agora listening on {scheme}://{addr}");
    let _ = std::io::stdout().flush();
    Ok((listener, format!("{scheme}://{addr}")))
}

pub async fn dev(args: super::DevArgs) -> anyhow::Result<ExitCode> {
    let super::DevArgs {
        listen,
        data_dir,
        insecure,
        master,
        agent,
        batch,
        services,
    } = args;
    let mut config = master_config(&master)?;
    let registry = open_registry(&data_dir.join("master"))?;
    let credentials =
        super::credentials::dev_credentials(&data_dir, super::credentials::user_token_path())?;
    config.auth = agora_master::auth::Authority::load(&credentials.auth_file)?;
    config.audit_log = Some(data_dir.join("master").join("audit.log"));
    let (listener, url) = bind(&listen, false, insecure).await?;
    let mut services_config =
        agora_services::ServicesConfig::new(url.clone(), data_dir.join("services"));
    services_config.lb_address = (!services.no_lb).then_some(services.lb_address);
    services_config.token = Some(credentials.services_token.clone());
    let services_http = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the services framework's HTTP API")?;
    let mut batch_config = agora_batch::BatchConfig::new(url.clone(), data_dir.join("batch"));
    batch_config.reconcile_grace = batch.reconcile_grace;
    batch_config.token = Some(credentials.batch_token.clone());
    let batch_http = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the batch framework's HTTP API")?;
    let mut agent_config = agent_config(url.clone(), data_dir, &agent)?;
    agent_config.token = Some(credentials.agent_token.clone());
    let agent_http = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the agent's HTTP API")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let master_task = tokio::spawn(agora_master::run(
        listener,
        config,
        agora_master::Backing::Embedded(registry),
        stopped(stop_rx.clone()),
    ));
    let (stop_batch_tx, stop_batch_rx) = watch::channel(false);
    let mut batch_task = tokio::spawn(agora_batch::run(
        batch_config,
        batch_http,
        stopped(stop_batch_rx.clone()),
    ));
    // Services stops with batch, before the agent and the master.
    let mut services_task = tokio::spawn(agora_services::run(
        services_config,
        services_http,
        stopped(stop_batch_rx),
    ));
    let agent_stop = stop_rx.clone();
    let mut agent_task = tokio::spawn(async move {
        run_agent(agent_config, &agent, agent_http, stopped(agent_stop)).await
    });
    eprintln!(
        "agora dev: master, agent, batch and services up; web UI at {url}/#token={}; jobs with `agora job submit FILE`, apps with `agora app deploy FILE`; Ctrl-C stops all",
        credentials.user_token
    );
    // Whatever stops first (Ctrl-C, or a part that could not start) takes
    // the rest down: batch first, so it saves its state while the master is
    // still there, then the agent, then the master.
    let early = tokio::select! {
        () = terminated() => None,
        result = &mut agent_task => Some(("agent", result.context("agent task")?.err())),
        result = &mut batch_task => Some((
            "batch framework",
            result.context("batch task")?.err().map(anyhow::Error::from),
        )),
        result = &mut services_task => Some((
            "services framework",
            result.context("services task")?.err().map(anyhow::Error::from),
        )),
    };
    stop_batch_tx.send_replace(true);
    let finished = early.as_ref().map(|(who, _)| *who);
    let batch_result = if finished == Some("batch framework") {
        Ok(())
    } else {
        (&mut batch_task)
            .await
            .context("batch task")?
            .map_err(anyhow::Error::from)
    };
    let services_result = if finished == Some("services framework") {
        Ok(())
    } else {
        (&mut services_task)
            .await
            .context("services task")?
            .map_err(anyhow::Error::from)
    };
    stop_tx.send_replace(true);
    let agent_result = if finished == Some("agent") {
        Ok(())
    } else {
        (&mut agent_task).await.context("agent task")?
    };
    master_task.await.context("master task")??;
    if let Some((who, Some(e))) = early {
        return Err(e.context(who));
    }
    agent_result.context("agent")?;
    batch_result.context("batch framework")?;
    services_result.context("services framework")?;
    Ok(ExitCode::SUCCESS)
}

/// Opens the master's embedded registry in `data_dir`.
fn open_registry(data_dir: &std::path::Path) -> anyhow::Result<agora_master::Registry> {
    let path = data_dir.join("registry.redb");
    agora_master::Registry::open(&path)
        .with_context(|| format!("opening the registry {}", path.display()))
}

/// Tokens and task secrets must not cross a network in the clear: a
/// plaintext port off loopback needs `--insecure`.
fn refuse_plaintext_off_loopback(
    listener: &TcpListener,
    tls: bool,
    insecure: bool,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("reading the bound address")?;
    if tls || addr.ip().is_loopback() {
        return Ok(());
    }
    anyhow::ensure!(
        insecure,
        "{addr} is not loopback: serve it with TLS (--tls-cert and --tls-key; `agora certs` makes them), or give --insecure to accept plaintext"
    );
    tracing::warn!(%addr, "--insecure: serving plaintext off loopback");
    Ok(())
}

pub async fn master(args: super::MasterArgs) -> anyhow::Result<ExitCode> {
    let mut config = master_config(&args.master)?;
    config.tls = args.tls.files(args.tls_client_ca.clone());
    config.client_tls = agora_proto::tls::ClientTls::load(args.tls_ca.as_deref(), None)?;
    config.auth = match &args.auth {
        Some(path) => agora_master::auth::Authority::load(path)?,
        None => {
            tracing::warn!(
                "--no-auth: anyone who reaches this master may run commands on every agent"
            );
            agora_master::auth::Authority::disabled()
        }
    };
    config.audit_log = Some(
        args.audit_log
            .clone()
            .unwrap_or_else(|| args.data_dir.join("audit.log")),
    );
    if let Some(path) = &config.audit_log
        && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let (listener, url) = bind(&args.listen, config.tls.is_some(), args.insecure).await?;
    let backing = match args.ha.etcd {
        Some(etcd) => agora_master::Backing::Etcd(agora_master::HaConfig {
            etcd,
            advertise: args.advertise.unwrap_or(url),
            lease_ttl: args.ha.leader_lease,
        }),
        None => agora_master::Backing::Embedded(open_registry(&args.data_dir)?),
    };
    agora_master::run(listener, config, backing, terminated()).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn agent(args: super::AgentArgs) -> anyhow::Result<ExitCode> {
    let mut config = agent_config(args.master.clone(), args.data_dir.clone(), &args.agent)?;
    config.token = args.token.token()?;
    config.tls = args.trust.client_tls()?;
    config.http_tls = args.tls.files(None);
    let listen = &args.listen;
    let http = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen} for the agent's HTTP API"))?;
    refuse_plaintext_off_loopback(&http, config.http_tls.is_some(), false).context(
        "the agent's HTTP API serves task sandboxes: give it --tls-cert and --tls-key, or listen on loopback",
    )?;
    run_agent(config, &args.agent, http, terminated()).await?;
    Ok(ExitCode::SUCCESS)
}

/// A framework process's API port and credentials.
struct FrameworkProcess {
    listener: TcpListener,
    token: Option<String>,
    tls: agora_proto::tls::ClientTls,
    http_tls: Option<agora_sdk::serve::ServerTls>,
}

/// Binds the framework's API (`name` is for messages), refusing plaintext
/// off loopback without `--insecure`, and prints where it listens.
async fn framework_process(
    name: &str,
    listen: &str,
    security: &super::FrameworkSecurityFlags,
) -> anyhow::Result<FrameworkProcess> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen} for the {name} HTTP API"))?;
    let http_tls = security
        .tls
        .files(None)
        .map(|files| files.config())
        .transpose()
        .with_context(|| format!("the {name} API's certificate"))?;
    refuse_plaintext_off_loopback(&listener, http_tls.is_some(), security.insecure)?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let scheme = if http_tls.is_some() { "https" } else { "http" };
    println!("agora {name} listening on {scheme}://{addr}");
    let _ = std::io::stdout().flush();
    Ok(FrameworkProcess {
        listener,
        token: security.token.token()?,
        tls: security.trust.client_tls()?,
        http_tls,
    })
}

pub async fn batch(args: super::BatchArgs) -> anyhow::Result<ExitCode> {
    let process = framework_process("batch", &args.listen, &args.security).await?;
    let mut config = agora_batch::BatchConfig::new(args.master, args.data_dir);
    config.advertise = args.advertise;
    config.reconcile_grace = args.batch.reconcile_grace;
    config.etcd = args.ha.etcd;
    config.lease_ttl = args.ha.leader_lease;
    config.token = process.token;
    config.tls = process.tls;
    config.http_tls = process.http_tls;
    agora_batch::run(config, process.listener, terminated()).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn services(args: super::ServicesArgs) -> anyhow::Result<ExitCode> {
    let process = framework_process("services", &args.listen, &args.security).await?;
    let mut config = agora_services::ServicesConfig::new(args.master, args.data_dir);
    config.advertise = args.advertise;
    config.reconcile_grace = args.reconcile_grace;
    config.lb_address = (!args.services.no_lb).then_some(args.services.lb_address);
    config.etcd = args.ha.etcd;
    config.lease_ttl = args.ha.leader_lease;
    config.token = process.token;
    config.tls = process.tls;
    config.http_tls = process.http_tls;
    agora_services::run(config, process.listener, terminated()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `agora lb`: balances every app with a service port, following the
/// services framework's event stream through the master.
pub async fn lb(master: String, address: std::net::IpAddr) -> anyhow::Result<ExitCode> {
    println!("agora lb following {master}, binding service ports on {address}");
    let _ = std::io::stdout().flush();
    let balancer = agora_services::lb::LoadBalancer::new(address);
    let token = super::credentials::client_token(None)?;
    let tls = super::credentials::client_tls()?;
    agora_services::lb::follow(&master, token.as_deref(), &tls, balancer, terminated()).await;
    Ok(ExitCode::SUCCESS)
}
