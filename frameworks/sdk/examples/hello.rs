//! A whole Agora framework in one file: run N copies of a command, print how
//! each ended, exit 0 only if all of them finished.
//!
//! ```sh
//! cargo run -p agora-sdk --example hello -- --master http://127.0.0.1:5050 --tasks 3 --cmd 'echo hi'
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use agora_sdk::{
    Driver, FrameworkConfig, Offer, Resources, Scheduler, TaskState, TaskStatus, is_terminal,
    offer_id, offer_resources, status_state, status_task_id, task,
};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Run N copies of a command on an Agora cluster")]
struct Args {
    #[arg(long, env = "AGORA_MASTER", default_value = "http://127.0.0.1:5050")]
    master: String,
    #[arg(long, default_value_t = 1)]
    tasks: u32,
    #[arg(long, default_value = "echo hi")]
    cmd: String,
    #[arg(long, default_value_t = 0.1)]
    cpus: f64,
    #[arg(long, default_value_t = 32.0)]
    mem: f64,
    #[arg(long, default_value = "*")]
    role: String,
}

struct Hello {
    command: String,
    per_task: Resources,
    to_launch: u32,
    launched: u32,
    total: u32,
    ended: BTreeMap<String, TaskState>,
    started: Option<Instant>,
}

impl Scheduler for Hello {
    async fn offers(&mut self, driver: &Driver, offers: Vec<Offer>) {
        for offer in offers {
            let mut left = offer_resources(&offer);
            let mut tasks = Vec::new();
            while self.to_launch > 0 && left.contains(&self.per_task) {
                let id = format!("hello-{}", self.launched);
                tasks.push(task(&id, &self.command, &self.per_task));
                left.subtract(&self.per_task);
                self.launched += 1;
                self.to_launch -= 1;
            }
            if tasks.is_empty() {
                // Nothing left to run: don't offer this agent again soon.
                let _ = driver.decline(&[offer_id(&offer)], Some(60.0)).await;
                continue;
            }
            self.started.get_or_insert_with(Instant::now);
            if let Err(e) = driver.accept(&[offer_id(&offer)], tasks, Some(0.0)).await {
                eprintln!("accept failed: {e}");
            }
        }
        if self.to_launch == 0 {
            let _ = driver.suppress().await;
        }
    }

    async fn status_update(&mut self, driver: &Driver, status: TaskStatus) {
        let state = status_state(&status);
        if !is_terminal(state) {
            return;
        }
        let id = status_task_id(&status).to_string();
        if self.ended.insert(id.clone(), state).is_none() {
            let detail = if status.message.is_empty() {
                String::new()
            } else {
                format!(" ({})", status.message)
            };
            println!("{id} {}{detail}", state.as_str_name());
        }
        if self.ended.len() as u32 == self.total {
            let elapsed = self
                .started
                .map(|s| s.elapsed().as_secs_f64())
                .unwrap_or(0.0);
            println!(
                "{} tasks ended in {elapsed:.2} s ({:.1} tasks/s)",
                self.total,
                f64::from(self.total) / elapsed.max(1e-9)
            );
            driver.teardown();
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let per_task = Resources::new()
        .with_scalar("cpus", args.cpus)
        .with_scalar("mem", args.mem);
    let mut config = FrameworkConfig::new(&args.master, "hello");
    config.role = args.role.clone();
    let driver = match Driver::new(config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let hello = Hello {
        command: args.cmd,
        per_task,
        to_launch: args.tasks,
        launched: 0,
        total: args.tasks,
        ended: BTreeMap::new(),
        started: None,
    };
    if args.tasks == 0 {
        return ExitCode::SUCCESS;
    }
    match driver.run(hello).await {
        Ok(hello) => {
            let all_finished = hello.ended.len() as u32 == hello.total
                && hello.ended.values().all(|s| *s == TaskState::TaskFinished);
            if all_finished {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
