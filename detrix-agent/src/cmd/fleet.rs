//! `detrix-agent fleet wake|sleep|status`: the flags of a staged fleet wake and the call into
//! `detrix_agent::fleet::cli`, which drives the DetrixWake object the node agents reconcile.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Create a DetrixWake and advance it stage by stage (canary first) while each stage is
    /// healthy; on a failure or a breaker trip, halt and put every target back to sleep.
    Wake(FleetWakeArgs),
    /// Halt a wake: every target it woke sleeps.
    Sleep(FleetNameArgs),
    /// Show a wake (or every wake in the namespace) and each node's report.
    Status(FleetStatusArgs),
}

#[derive(clap::Args, Debug)]
pub struct FleetWakeArgs {
    /// Label selector of the pods to wake (e.g. app=orders).
    #[arg(long)]
    selector: String,
    /// The pods' namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The DetrixWake's name (default wake-<unix seconds>).
    #[arg(long)]
    name: Option<String>,
    /// Targets woken first, alone.
    #[arg(long, default_value_t = 1)]
    canary: u32,
    /// Percentages awake at each stage after the canary, the last 100%.
    #[arg(long, default_value = "10%,50%,100%")]
    steps: String,
    /// Least time a stage stays healthy before the next (e.g. 30s).
    #[arg(long, default_value = "30s")]
    interval: String,
    /// Every target this wake woke sleeps this long after it started, enforced by the nodes.
    #[arg(long)]
    ttl: String,
    /// Register the targets in SafeMode (their pods must carry detrix.dev/safe-mode: "true").
    #[arg(long)]
    safe_mode: bool,
    /// Halt when a stage is not healthy within this time.
    #[arg(long, default_value = "5m")]
    stage_timeout: String,
}

#[derive(clap::Args, Debug)]
pub struct FleetNameArgs {
    /// The DetrixWake's name.
    name: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
}

#[derive(clap::Args, Debug)]
pub struct FleetStatusArgs {
    /// The DetrixWake's name (default: every one in the namespace).
    name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Follow the named DetrixWake: print it again at each change until it is deleted.
    #[arg(short = 'w', long)]
    watch: bool,
}

/// Runs `fleet wake|sleep|status` against the cluster the kubeconfig (or in-cluster config)
/// names: exit 0 when done, 3 when a wake halted.
pub fn run(cmd: FleetCommand) -> anyhow::Result<ExitCode> {
    use detrix_agent::fleet::cli;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the event loop")?;
    rt.block_on(async move {
        let client = detrix_agent::pods::watch::client().await?;
        let mut out = std::io::stdout();
        match cmd {
            FleetCommand::Wake(a) => {
                let args = cli::WakeArgs {
                    selector: a.selector,
                    namespace: a.namespace,
                    name: a.name,
                    canary: a.canary,
                    steps: a.steps,
                    interval: a.interval,
                    ttl: a.ttl,
                    safe_mode: a.safe_mode,
                    stage_timeout: a.stage_timeout,
                };
                let done = cli::wake(client, args, &mut out).await?;
                Ok(if done {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(3)
                })
            }
            FleetCommand::Sleep(a) => {
                cli::sleep(client, &a.namespace, &a.name, &mut out).await?;
                Ok(ExitCode::SUCCESS)
            }
            FleetCommand::Status(a) => {
                cli::status(client, &a.namespace, a.name.as_deref(), a.watch, &mut out).await?;
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
