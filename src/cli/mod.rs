//! Command-line parsing and dispatch.

mod app;
mod certs;
mod client;
mod credentials;
mod job;
mod run;
mod sim;
mod state;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "agora",
    version,
    about = "Agora: a cluster manager in the Mesos tradition"
)]
struct Cli {
    /// Log lines as `text` or `json` (filter with AGORA_LOG or RUST_LOG).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole system in one process: master, one agent with this
    /// machine's resources, and the batch and services frameworks.
    Dev(DevArgs),
    /// Run a master.
    Master(MasterArgs),
    /// Run an agent that offers this machine to a master.
    Agent(AgentArgs),
    /// Run the batch framework against a master.
    Batch(BatchArgs),
    /// Run the services framework (long-running apps) against a master.
    Services(ServicesArgs),
    /// Deploy and manage long-running apps.
    App(AppArgs),
    /// A standalone load balancer for apps with a `[service]` port, following
    /// the services framework through the master.
    Lb(LbArgs),
    /// Submit and manage batch jobs.
    Job(JobArgs),
    /// Show the cluster's state.
    State(StateArgs),
    /// Make TLS certificates signed by the cluster's own CA (made on first
    /// use in --out): for the master, agents, and clients (mutual TLS).
    Certs {
        /// Where ca.pem, ca-key.pem, NAME.pem and NAME-key.pem go.
        #[arg(long, default_value = "./agora-certs")]
        out: PathBuf,
        /// The certificate's name (its file name and common name).
        #[arg(long)]
        name: String,
        /// Comma-separated host names and addresses it is good for.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
    },
    /// The simulator: a cluster in virtual time around the real allocator.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Internal: a container's init process (started by the agent).
    #[command(hide = true)]
    ContainerInit { dir: PathBuf },
}

#[derive(Args, Clone)]
pub struct MasterFlags {
    /// An agent silent this long is marked unreachable (e.g. `15s`, `500ms`).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub agent_timeout: Duration,
    /// Offers unanswered this long are rescinded.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub offer_timeout: Duration,
    /// Period of the batch allocation pass.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub allocation_interval: Duration,
    /// Role weights for DRF, e.g. `prod=2,dev=1`.
    #[arg(long, default_value = "")]
    pub weights: String,
    /// How a pass spreads free resources: `demand` (offers sized to what a
    /// framework says it wants, none holding more than 1/n of what is free
    /// with n frameworks connected), `mesos` (each agent to the framework
    /// furthest below its share) or `capped[:SHARE]` (no framework holds
    /// more than SHARE of what is free in offers); see `agora sim`.
    #[arg(long, default_value = "demand", value_parser = agora_master::allocator::OfferPolicy::parse)]
    pub offer_policy: agora_master::allocator::OfferPolicy,
    /// An agent unreachable this long is removed from the registry (its
    /// tasks become `TASK_LOST`).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub agent_removal_timeout: Duration,
    /// Heartbeats per second all agents together may send: past
    /// agents/this, agents heartbeat less often and the agent timeout grows
    /// to five intervals.
    #[arg(long, default_value_t = 5000.0)]
    pub max_agent_heartbeats_per_second: f64,
    /// Most open connections to the master in all; more are closed at once.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Most open connections from one address.
    #[arg(long, default_value_t = 2_000)]
    pub max_connections_per_ip: usize,
    /// A request's headers must arrive within this.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// A framework's API must begin to answer a request relayed to it
    /// (`/{name}/…`) within this; else the caller gets 504.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub relay_timeout: Duration,
}

/// Several masters (or framework replicas) on etcd: one leads.
#[derive(Args, Clone)]
pub struct HaFlags {
    /// etcd endpoints (`http://h1:2379,http://h2:2379`): keep the state in
    /// etcd and elect one leader among the processes given the same list.
    #[arg(long, env = "AGORA_ETCD")]
    pub etcd: Option<String>,
    /// The leader's lease: a dead leader is replaced within about this.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub leader_lease: Duration,
}

#[derive(Args, Clone)]
pub struct AgentFlags {
    /// Resources to offer instead of detecting them,
    /// e.g. `cpus:4;mem:8192;disk:20000;ports:[31000-32000]`.
    #[arg(long)]
    pub resources: Option<String>,
    /// Attributes, e.g. `rack:r1;zone:a`.
    #[arg(long, default_value = "")]
    pub attributes: String,
    /// Hostname to report (default: this machine's).
    #[arg(long)]
    pub hostname: Option<String>,
    /// How long an unacknowledged status update waits before it is resent.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub status_retry: Duration,
    /// `linux` (cgroups and namespaces) or `process` (plain process groups).
    #[arg(long, default_value = "linux", value_parser = ["linux", "process"])]
    pub containerizer: String,
    /// Where the cgroup filesystem is mounted (v1 or v2, detected).
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// Cap every task's cpu at its `cpus` (tasks may also ask for it).
    #[arg(long)]
    pub cpu_hard_limit: bool,
    /// Most processes a task may have, unless it says otherwise.
    #[arg(long, default_value_t = 4096)]
    pub pids_limit: u64,
    /// On start: `reattach` to the tasks a previous run left, or `cleanup` (kill them).
    #[arg(long, default_value = "reattach", value_parser = ["reattach", "cleanup"])]
    pub recover: String,
    /// How long an ended task's sandbox is kept.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub sandbox_gc: Duration,
    /// Who tasks run as when neither they nor their framework name a user.
    #[arg(long, default_value = "nobody")]
    pub default_task_user: String,
    /// Let tasks run as root (uid 0) when they ask to.
    #[arg(long)]
    pub allow_root_tasks: bool,
    /// How often running tasks' disk use is measured: a task holding more
    /// than its `disk` resource is killed (TASK_FAILED, disk limitation).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub disk_watch_interval: Duration,
    /// Do not enforce tasks' `disk` resource.
    #[arg(long)]
    pub no_disk_limit: bool,
}

#[derive(Args)]
struct DevArgs {
    /// Address for gRPC, the HTTP API and the web UI.
    #[arg(long, default_value = "127.0.0.1:5050")]
    listen: String,
    /// Where the agent keeps sandboxes and its id, and batch its jobs.
    #[arg(long, default_value = "./agora-data")]
    data_dir: PathBuf,
    /// Listen on an address other than loopback in plaintext.
    #[arg(long)]
    insecure: bool,
    #[command(flatten)]
    batch: BatchFlags,
    #[command(flatten)]
    services: ServicesFlags,
    #[command(flatten)]
    master: MasterFlags,
    #[command(flatten)]
    agent: AgentFlags,
}

/// What a daemon trusts of an `https://` master.
#[derive(Args, Clone)]
pub struct TrustFlags {
    /// The CA bundle (PEM) that signed the master's certificate.
    #[arg(long, env = "AGORA_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl TrustFlags {
    pub fn client_tls(&self) -> anyhow::Result<agora_proto::tls::ClientTls> {
        Ok(agora_proto::tls::ClientTls::load(
            self.tls_ca.as_deref(),
            None,
        )?)
    }
}

/// A server's certificate: with it, it serves https.
#[derive(Args, Clone)]
pub struct ServeTlsFlags {
    /// The certificate chain (PEM) to serve with.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ServeTlsFlags {
    pub fn files(&self, client_ca: Option<PathBuf>) -> Option<agora_proto::tls::ServerTlsFiles> {
        Some(agora_proto::tls::ServerTlsFiles {
            certificate: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca,
        })
    }
}

/// A framework process's credentials and its API's certificate.
#[derive(Args, Clone)]
pub struct FrameworkSecurityFlags {
    #[command(flatten)]
    pub token: TokenFlags,
    #[command(flatten)]
    pub trust: TrustFlags,
    /// The framework API's certificate.
    #[command(flatten)]
    pub tls: ServeTlsFlags,
    /// Serve the API in plaintext on an address other than loopback.
    #[arg(long)]
    pub insecure: bool,
}

/// Where a process finds the token it presents to the master
/// (`AGORA_TOKEN` overrides).
#[derive(Args, Clone)]
pub struct TokenFlags {
    /// A file whose first line is the bearer token to present to the master.
    #[arg(long, env = "AGORA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl TokenFlags {
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        credentials::daemon_token(self.token_file.as_deref())
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("authentication").required(true).args(["auth", "no_auth"])))]
struct MasterArgs {
    #[arg(long, default_value = "127.0.0.1:5050")]
    listen: String,
    /// The principals, their tokens and the ACLs (TOML; see ARCHITECTURE.md).
    /// Reloaded on SIGHUP.
    #[arg(long)]
    auth: Option<PathBuf>,
    /// Let anyone who reaches the master's port do anything, including run
    /// commands on every agent. For tests and trusted single-user machines.
    #[arg(long)]
    no_auth: bool,
    /// Where mutating operator calls are recorded (default:
    /// DATA_DIR/audit.log).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    #[command(flatten)]
    tls: ServeTlsFlags,
    /// Accept client certificates signed by this CA (mutual TLS; a
    /// certificate stands for the principal whose certificate_sha256 it has).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// What the master trusts when it calls agents' and frameworks' https APIs.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Serve plaintext on an address other than loopback (tokens and task
    /// secrets then cross the network in the clear).
    #[arg(long)]
    insecure: bool,
    /// Where the registry (agents, frameworks, weights, drains, tasks) lives
    /// (without `--etcd`).
    #[arg(long, default_value = "./agora-master-data")]
    data_dir: PathBuf,
    /// The URL other masters send clients to while this one leads
    /// (default: the listen address).
    #[arg(long)]
    advertise: Option<String>,
    #[command(flatten)]
    ha: HaFlags,
    #[command(flatten)]
    master: MasterFlags,
}

#[derive(Args)]
struct AgentArgs {
    /// The master's URL.
    #[arg(long, env = "AGORA_MASTER", default_value = "http://127.0.0.1:5050")]
    master: String,
    /// Address of the agent's own HTTP API (containers, sandbox files).
    #[arg(long, default_value = "127.0.0.1:5051")]
    listen: String,
    #[arg(long, default_value = "./agora-agent-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    agent: AgentFlags,
    /// The join token (needed the first time; the agent then keeps the
    /// secret the master issues it).
    #[command(flatten)]
    token: TokenFlags,
    #[command(flatten)]
    trust: TrustFlags,
    /// The agent's HTTP API certificate.
    #[command(flatten)]
    tls: ServeTlsFlags,
}

#[derive(Args, Clone)]
pub struct BatchFlags {
    /// How long a task the master does not know may be unaccounted for
    /// before it counts as lost (its agent may still re-register).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub reconcile_grace: Duration,
}

#[derive(Args)]
struct BatchArgs {
    /// The master's URL.
    #[arg(long, env = "AGORA_MASTER", default_value = "http://127.0.0.1:5050")]
    master: String,
    /// Address of the batch HTTP API (the master proxies `/batch/` to it).
    #[arg(long, default_value = "127.0.0.1:5060")]
    listen: String,
    /// The URL the master uses to reach the API (default: the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// Where the job store lives (without `--etcd`).
    #[arg(long, default_value = "./agora-batch-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    ha: HaFlags,
    #[command(flatten)]
    batch: BatchFlags,
    #[command(flatten)]
    security: FrameworkSecurityFlags,
}

#[derive(Args, Clone)]
pub struct ServicesFlags {
    /// Address the built-in load balancer binds apps' service ports on.
    #[arg(long, default_value = "127.0.0.1")]
    pub lb_address: std::net::IpAddr,
    /// Do not run the built-in load balancer.
    #[arg(long)]
    pub no_lb: bool,
}

#[derive(Args)]
struct ServicesArgs {
    /// The master's URL.
    #[arg(long, env = "AGORA_MASTER", default_value = "http://127.0.0.1:5050")]
    master: String,
    /// Address of the services HTTP API (the master proxies `/services/` to it).
    #[arg(long, default_value = "127.0.0.1:5070")]
    listen: String,
    /// The URL the master uses to reach the API (default: the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// Where the app store lives (without `--etcd`).
    #[arg(long, default_value = "./agora-services-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    ha: HaFlags,
    /// How long a task the master does not know may be unaccounted for
    /// before it counts as lost.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    reconcile_grace: Duration,
    #[command(flatten)]
    services: ServicesFlags,
    #[command(flatten)]
    security: FrameworkSecurityFlags,
}

#[derive(Args)]
struct LbArgs {
    /// The master's URL.
    #[arg(long, env = "AGORA_MASTER", default_value = "http://127.0.0.1:5050")]
    master: String,
    /// Address the service ports are bound on.
    #[arg(long, default_value = "0.0.0.0")]
    address: std::net::IpAddr,
}

#[derive(Args)]
struct AppArgs {
    /// The master's URL.
    #[arg(
        long,
        global = true,
        env = "AGORA_MASTER",
        default_value = "http://127.0.0.1:5050"
    )]
    master: String,
    #[command(subcommand)]
    command: AppCommand,
}

#[derive(Subcommand)]
pub enum AppCommand {
    /// Deploy the app(s) in a TOML or JSON file (`-` for stdin): new apps, or
    /// new versions of existing ones.
    Deploy {
        file: String,
        /// Follow the deployment: exit 0 when it finished, 1 when it rolled
        /// back, paused or was replaced.
        #[arg(long)]
        wait: bool,
    },
    /// List apps.
    List,
    /// An app's state: instances, deployment and its steps, why it waits.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// An app's versions, newest first.
    Versions { id: String },
    /// Change the number of instances.
    Scale {
        id: String,
        instances: u32,
        #[arg(long)]
        wait: bool,
    },
    /// Go back to an earlier version (default: the one before), the rolling way.
    Rollback {
        id: String,
        #[arg(long)]
        to: Option<u32>,
        #[arg(long)]
        wait: bool,
    },
    /// Replace every instance, the rolling way.
    Restart {
        id: String,
        #[arg(long)]
        wait: bool,
    },
    /// Cancel the app's running deployment (it rolls back).
    Cancel { id: String },
    /// The app's healthy instances as host:port.
    Endpoints {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove an app (its instances drain and stop).
    Rm { id: String },
}

#[derive(Args)]
struct JobArgs {
    /// The master's URL.
    #[arg(
        long,
        global = true,
        env = "AGORA_MASTER",
        default_value = "http://127.0.0.1:5050"
    )]
    master: String,
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(Subcommand)]
pub enum JobCommand {
    /// Submit the job(s) in a TOML or JSON file (`-` for stdin); prints their ids.
    Submit {
        file: String,
        /// Follow the job(s) to the end: exit 0 if all succeeded, 1 if not.
        #[arg(long)]
        wait: bool,
    },
    /// Replace existing jobs' definitions with those in a file (history is
    /// kept; active runs carry on; nothing is started).
    Update { file: String },
    /// List jobs.
    List {
        /// Only jobs in these states (e.g. `FAILED` or `QUEUED,RUNNING`).
        #[arg(long)]
        state: Option<String>,
    },
    /// A job's state and runs.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// A job instance's output (latest run unless `--run`).
    Logs {
        id: String,
        #[arg(long)]
        run: Option<u32>,
        #[arg(long, default_value_t = 0)]
        instance: u32,
        /// stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
        /// Keep printing until the instance ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Kill a job's active runs (or one run); killed runs are not retried.
    Kill {
        id: String,
        #[arg(long)]
        run: Option<u32>,
    },
    /// Remove a job and its history.
    Rm {
        id: String,
        /// Kill an active run first instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Start a run now (e.g. of a scheduled job).
    Run {
        id: String,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
pub enum SimCommand {
    /// Play one scenario; print (or write) its summary and plots.
    Run {
        scenario: PathBuf,
        #[arg(long)]
        seed: Option<u64>,
        /// Write summary.json and utilisation.svg here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the summary as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Override the scenario's offer policy (demand, mesos, capped, capped:SHARE).
        #[arg(long)]
        offer_policy: Option<String>,
    },
    /// Play a scenario once per value of one parameter (and per policy).
    Sweep {
        scenario: PathBuf,
        /// e.g. `frameworks.service.t_job`.
        #[arg(long)]
        param: String,
        /// Comma-separated, e.g. `0.1,1,10,100`.
        #[arg(long)]
        values: String,
        /// Comma-separated offer policies, e.g. `mesos,capped`.
        #[arg(long)]
        policy: Option<String>,
        /// Where sweep.json and the plots go (default ./sim-out).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Run many emulated agents in this process: each speaks the real agent
    /// protocol to the master and runs no processes (tasks finish after
    /// --task-duration, or run until killed). Until Ctrl-C.
    Emulate {
        #[arg(long, env = "AGORA_MASTER", default_value = "http://127.0.0.1:5050")]
        master: String,
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Each agent's resources.
        #[arg(
            long,
            default_value = "cpus:8;mem:16384;disk:100000;ports:[31000-32000]"
        )]
        resources: String,
        /// Each agent's attributes, e.g. `zone:a` (each also gets `rack`).
        #[arg(long, default_value = "")]
        attributes: String,
        /// How long a task runs (`30s`), or `forever` (until killed).
        #[arg(long, default_value = "forever")]
        task_duration: String,
        /// Agents whose sessions share one HTTP/2 connection.
        #[arg(long, default_value_t = 100)]
        agents_per_connection: usize,
    },
    /// Run a load framework: launch --tasks small tasks as fast as offers
    /// allow (or at --rate per second) and report tasks placed per second
    /// and accept → TASK_RUNNING latency.
    Load {
        #[arg(long, env = "AGORA_MASTER", default_value = "http://127.0.0.1:5050")]
        master: String,
        #[arg(long, default_value_t = 10_000)]
        tasks: u64,
        /// Tasks per second at most (default: as fast as offers allow).
        #[arg(long)]
        rate: Option<f64>,
        /// Each task's resources.
        #[arg(long, default_value = "cpus:0.01;mem:1")]
        task_size: String,
        #[arg(long, default_value = "true")]
        cmd: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct StateArgs {
    #[arg(long, env = "AGORA_MASTER", default_value = "http://127.0.0.1:5050")]
    master: String,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

/// Parses `15s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 15s, 500ms or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use ms, s, m or h)"
            ));
        }
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("`{text}` must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Client output piped into `head` and the like: end quietly when the
/// reader goes away, as Unix tools do, instead of panicking in `println!`.
#[allow(unsafe_code)]
fn quiet_on_closed_pipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_DFL installs no handler code; done before any thread starts.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

pub fn main_exec() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // The container init forks: it must run before any runtime thread exists.
    if let Command::ContainerInit { dir } = &cli.command {
        let code = agora_agent::init::container_init_main(dir);
        return Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)));
    }
    if matches!(
        cli.command,
        Command::Dev(_)
            | Command::Master(_)
            | Command::Agent(_)
            | Command::Batch(_)
            | Command::Services(_)
            | Command::Lb(_)
    ) {
        run::init_logging(cli.log_format == "json");
    }
    if matches!(
        cli.command,
        Command::Job(_) | Command::App(_) | Command::State(_)
    ) {
        quiet_on_closed_pipe();
    }
    if matches!(cli.command, Command::Master(_)) {
        // No transparent huge pages for the master (for the whole
        // process, what is mapped already included): mimalloc asks for
        // them, and each fault then zeroes 2 MB. At 10,000 emulated agents the scale bench ran at
        // 23.5k tasks/s without them against 20.0k with (two runs each),
        // and the idle master held 257 MiB against 400. Only the master:
        // the setting passes to children, and an agent's children are
        // the user's tasks.
        if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
            tracing::warn!("could not turn transparent huge pages off: {e}");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Dev(a) => runtime.block_on(run::dev(a)),
        Command::Services(a) => runtime.block_on(run::services(a)),
        Command::App(a) => runtime.block_on(app::run(&a.master, a.command)),
        Command::Lb(a) => runtime.block_on(run::lb(a.master, a.address)),
        Command::Batch(a) => runtime.block_on(run::batch(a)),
        Command::Job(a) => runtime.block_on(job::run(&a.master, a.command)),
        Command::Master(a) => runtime.block_on(run::master(a)),
        Command::Agent(a) => runtime.block_on(run::agent(a)),
        Command::State(a) => runtime.block_on(state::show(&a.master, a.json)),
        Command::Sim(c) => sim::run(c, &runtime),
        Command::Certs { out, name, hosts } => {
            let sha256 = certs::issue(&out, &name, &hosts)?;
            println!(
                "{}/{name}.pem and {name}-key.pem, signed by {}/ca.pem; certificate_sha256 = \"{sha256}\"",
                out.display(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::ContainerInit { .. } => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
