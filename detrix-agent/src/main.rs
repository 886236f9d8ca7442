//! The `detrix-agent` binary: argument parsing, logging setup, and error reporting. All the
//! work is in the library.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

mod cmd;

#[derive(Parser, Debug)]
#[command(
    name = "detrix-agent",
    version,
    about = "Watch values inside a running native program at any source line, without stopping it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Capture values at a source line of a running process and print one line per hit.
    Capture(cmd::capture::CaptureArgs),
    /// Stand in for a Detrix client inside a running process: serve the control plane, register
    /// with the daemon on wake and serve it DAP, capturing logpoints with uprobes.
    Attach(AttachArgs),
    /// Show, without a process or privileges, how FILE:LINE and each expression resolve in a
    /// binary: probe points (every inlined copy), placement, plan steps or the reason not.
    Resolve(ResolveArgs),
    /// One agent for the host: every process a rule selects (containers included) becomes a
    /// target with its own daemon connection, found as it starts and dropped as it exits.
    Serve(ServeArgs),
    /// Staged wake of a fleet through the Kubernetes API (a DetrixWake object the node agents
    /// of `serve --kubernetes` act on): wake, sleep, status.
    #[command(subcommand)]
    Fleet(cmd::fleet::FleetCommand),
    /// Internal: the guard between the agent and a fallback debugger it spawned
    /// (`detrix_agent::fallback::guard`).
    #[command(name = "debugger-guard", hide = true)]
    DebuggerGuard(GuardArgs),
}

#[derive(clap::Args, Debug)]
struct GuardArgs {
    #[arg(long)]
    agent: u32,
    #[arg(long)]
    target: u32,
    #[arg(long)]
    relay: bool,
    #[arg(last = true, required = true)]
    command: Vec<std::ffi::OsString>,
}

/// `serve`'s flags; they add to the config file (see `detrix_agent::serve::config`).
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// TOML file with `[[rule]]`s and serve-wide defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// One more rule: key=value[,key=value…], keys exe, comm, cmdline, cgroup, container, user
    /// (all must match). Repeatable.
    #[arg(long = "select", value_name = "RULE")]
    select: Vec<String>,
    /// manual: targets sleep until woken; auto: each registers with the daemon when found.
    #[arg(long, value_name = "manual|auto")]
    wake: Option<String>,
    /// The Detrix daemon's REST address (default http://127.0.0.1:8090).
    #[arg(long, env = "DETRIX_DAEMON_URL")]
    daemon_url: Option<String>,
    /// Address the host control plane listens on (default 127.0.0.1).
    #[arg(long, env = "DETRIX_CONTROL_HOST")]
    control_host: Option<String>,
    /// Host control plane port (default 0: any free port).
    #[arg(long, env = "DETRIX_CONTROL_PORT")]
    control_port: Option<u16>,
    /// Node mode: the containers of this node's pods, found through the Kubernetes API
    /// (in-cluster config or KUBECONFIG), are the targets, named <namespace>/<pod>/<container>.
    #[arg(long)]
    kubernetes: bool,
    /// This node's name (in a DaemonSet: the downward API's spec.nodeName). Node mode only.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Label selector (key=value, key!=value, key, !key; comma-joined) of the pods to observe,
    /// besides those annotated detrix.dev/observe: "true". Node mode only.
    #[arg(long, env = "DETRIX_POD_SELECTOR")]
    pod_selector: Option<String>,
    /// Percent of one CPU every target's probes together may cost before the dearest are
    /// switched off; 0 = no host budget.
    #[arg(long, default_value_t = 100.0)]
    host_cpu_budget: f64,
    #[command(flatten)]
    client: ClientArgs,
}

/// What `attach` and `serve` share: how each target is a Detrix client (options and environment
/// variables as the Go client's).
#[derive(clap::Args, Debug)]
struct ClientArgs {
    /// IP literal registered as `host` and bound by the DAP listener.
    #[arg(long, default_value = "127.0.0.1")]
    advertise_host: String,
    /// An address that may connect to the DAP port from another host (repeatable); required
    /// when --advertise-host is not loopback. Loopback peers must be root or the daemon's user.
    #[arg(long = "dap-allow-peer", value_name = "ADDR")]
    dap_allow_peers: Vec<std::net::IpAddr>,
    /// Where token files are looked for after $HOME/detrix.
    #[arg(long, env = "DETRIX_HOME")]
    detrix_home: Option<std::path::PathBuf>,
    /// Seconds to wait for the daemon's /health.
    #[arg(long, env = "DETRIX_HEALTH_CHECK_TIMEOUT", default_value_t = 2.0)]
    health_check_timeout: f64,
    /// Seconds to wait for the registration (the daemon connects back before it answers).
    #[arg(long, env = "DETRIX_REGISTER_TIMEOUT", default_value_t = 5.0)]
    register_timeout: f64,
    /// Seconds to wait for the unregistration.
    #[arg(long, env = "DETRIX_UNREGISTER_TIMEOUT", default_value_t = 2.0)]
    unregister_timeout: f64,
    /// Percent of one CPU a probe may cost (BPF time + trap estimate, over a second) before
    /// it is switched off; 0 = never.
    #[arg(long, default_value_t = 20.0)]
    cpu_budget: f64,
}

impl ClientArgs {
    /// The daemon's token: `$DETRIX_TOKEN`, else the token files under `$HOME/detrix`, then
    /// `--detrix-home`.
    fn token(&self) -> Option<String> {
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        let env_token = std::env::var("DETRIX_TOKEN").ok();
        detrix_agent::daemon::discover_token(
            env_token.as_deref(),
            home.as_deref(),
            self.detrix_home.as_deref(),
        )
    }

    /// `--cpu-budget` as a fraction of one CPU, checked.
    fn cpu_budget(&self) -> anyhow::Result<f64> {
        if !(self.cpu_budget.is_finite() && self.cpu_budget >= 0.0) {
            anyhow::bail!(
                "--cpu-budget {} is not a percentage of one CPU; pass a number ≥ 0 (0 = no breaker)",
                self.cpu_budget
            );
        }
        Ok(self.cpu_budget / 100.0)
    }

    /// The health, registration and unregistration timeouts, checked.
    fn timeouts(&self) -> anyhow::Result<[std::time::Duration; 3]> {
        Ok([
            seconds("DETRIX_HEALTH_CHECK_TIMEOUT", self.health_check_timeout)?,
            seconds("DETRIX_REGISTER_TIMEOUT", self.register_timeout)?,
            seconds("DETRIX_UNREGISTER_TIMEOUT", self.unregister_timeout)?,
        ])
    }
}

#[derive(clap::Args, Debug)]
struct ResolveArgs {
    /// The executable (or shared object) with debug info.
    #[arg(long)]
    binary: std::path::PathBuf,
    /// Source location: FILE:LINE.
    #[arg(long, value_name = "FILE:LINE", required_unless_present = "coverage")]
    at: Option<String>,
    /// Expression to resolve (repeatable).
    #[arg(long = "expr", value_name = "EXPR")]
    exprs: Vec<String>,
    /// Instead of one line: every statement line of the binary's own source files (or those
    /// under `--under`), where its probe lands (emulated or single-stepped) and why, then the
    /// totals.
    #[arg(long, conflicts_with_all = ["at", "exprs", "timing"])]
    coverage: bool,
    /// With --coverage: only source files whose path contains this (a directory, or a file's
    /// `dir/name`; repeatable).
    #[arg(long, value_name = "DIR", requires = "coverage")]
    under: Vec<String>,
    /// With --coverage: plan every parameter and local in scope at each line (else no value).
    #[arg(long, requires = "coverage")]
    locals: bool,
    /// With --coverage: place as before the basic-block candidates (only later instructions
    /// of the statement, every value unchanged), for comparison.
    #[arg(long, requires = "coverage")]
    statement_only: bool,
    /// Show source paths relative to this prefix.
    #[arg(long, default_value = "")]
    strip_prefix: String,
    /// Also print to stderr how long opening the binary, the first resolution (cold) and a
    /// second one on the same parsed binary (warm, what every later logpoint pays) took.
    #[arg(long)]
    timing: bool,
}

/// Options and environment variables as the Go client's (same names, same defaults).
#[derive(clap::Args, Debug)]
struct AttachArgs {
    /// Process to observe.
    #[arg(long)]
    pid: u32,
    /// Connection name shown by the daemon (default: detrix-client-<pid>).
    #[arg(long, env = "DETRIX_NAME")]
    name: Option<String>,
    /// The Detrix daemon's REST address.
    #[arg(
        long,
        env = "DETRIX_DAEMON_URL",
        default_value = "http://127.0.0.1:8090"
    )]
    daemon_url: String,
    /// Address the control plane listens on.
    #[arg(long, env = "DETRIX_CONTROL_HOST", default_value = "127.0.0.1")]
    control_host: String,
    /// Control plane port (0: any free port).
    #[arg(long, env = "DETRIX_CONTROL_PORT", default_value_t = 0)]
    control_port: u16,
    /// DAP port the daemon connects to (0: any free port).
    #[arg(long, env = "DETRIX_DEBUG_PORT", default_value_t = 0)]
    debug_port: u16,
    /// Register in SafeMode: the daemon then refuses metrics that need breakpoint mode.
    #[arg(long)]
    safe_mode: bool,
    /// What to present to the daemon; auto: go for Go targets, rust for Rust, C and C++.
    #[arg(long, value_enum, default_value_t = LanguageArg::Auto)]
    language: LanguageArg,
    /// Identity field workspaceRoot (default: the target's working directory).
    #[arg(long)]
    workspace_root: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
    /// Longest string captured, in bytes.
    #[arg(long, default_value_t = 256)]
    string_cap: u32,
    /// Most elements of a slice or Vec captured; the rest show as `...+N more`.
    #[arg(long, default_value_t = detrix_agent::plan::DEFAULT_ELEM_CAP, value_parser = clap::value_parser!(u32).range(1..=256))]
    max_elements: u32,
    /// Write every DAP message, both ways, to FILE as JSON lines (for golden transcripts).
    #[arg(long, value_name = "FILE")]
    dap_record: Option<std::path::PathBuf>,
    /// The target's build commit, sent as buildCommit (default: the target's environment,
    /// then its binary's Go build info, then the git checkout it runs in).
    #[arg(long, value_name = "SHA")]
    build_commit: Option<String>,
    /// The target's build tag, sent as buildTag (default: found as for --build-commit).
    #[arg(long, value_name = "TAG")]
    build_tag: Option<String>,
    /// A daemon URL a wake body may name besides --daemon-url (repeatable); any other is
    /// refused with 403, so the token is only ever sent where the operator said.
    #[arg(long = "allow-daemon-url", value_name = "URL")]
    allow_daemon_urls: Vec<String>,
    /// Print each plan step that faults, as the eBPF program reports it (off: no cost).
    #[arg(long)]
    ebpf_log: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LanguageArg {
    Auto,
    Go,
    Rust,
}

fn parse_at(at: &str) -> anyhow::Result<(String, u32)> {
    let (file, line) = at
        .rsplit_once(':')
        .with_context(|| format!("--at `{at}` is not FILE:LINE (e.g. orders.c:42)"))?;
    let line: u32 = line
        .parse()
        .with_context(|| format!("--at `{at}`: `{line}` is not a line number"))?;
    anyhow::ensure!(
        !file.is_empty() && line > 0,
        "--at `{at}` is not FILE:LINE with a line ≥ 1"
    );
    Ok((file.to_owned(), line))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", render_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, skipping a cause whose text the message already contains
/// (library errors embed their source in the sentence).
fn render_error(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

fn seconds(what: &str, s: f64) -> anyhow::Result<std::time::Duration> {
    anyhow::ensure!(
        s.is_finite() && s > 0.0 && s <= 3600.0,
        "{what} must be a number of seconds above 0 and at most 3600, got {s:?}"
    );
    Ok(std::time::Duration::from_secs_f64(s))
}

fn attach(args: AttachArgs) -> anyhow::Result<ExitCode> {
    use detrix_agent::daemon::{self, Agent, AttachConfig, ExitReason};
    use detrix_agent::engine::{Engine, EngineOptions, Resolver};
    let opts = EngineOptions {
        string_cap: args.string_cap,
        elem_cap: args.max_elements,
        load: detrix_agent::probe::LoadOptions {
            ebpf_log: args.ebpf_log,
            ..Default::default()
        },
        ..EngineOptions::default()
    };
    detrix_agent::privs::check_target_owner(args.pid)?;
    let resolver = Resolver::open(args.pid, opts)
        .with_context(|| format!("attaching to process {}", args.pid))?;
    let language = match args.language {
        LanguageArg::Go => "go",
        LanguageArg::Rust => "rust",
        LanguageArg::Auto => resolver
            .language()
            .with_context(|| {
                format!(
                    "detecting the language of process {} (pass --language go|rust to choose)",
                    args.pid
                )
            })?
            .daemon_name(),
    };
    let [health_timeout, register_timeout, unregister_timeout] = args.client.timeouts()?;
    let cpu_budget = args.client.cpu_budget()?;
    let cfg = AttachConfig {
        pid: args.pid,
        name: args
            .name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("detrix-client-{}", args.pid)),
        daemon_url: args.daemon_url,
        control_host: args.control_host.clone(),
        control_port: args.control_port,
        debug_port: args.debug_port,
        safe_mode: args.safe_mode,
        language,
        workspace_root: args
            .workspace_root
            .unwrap_or_else(|| daemon::target_cwd(args.pid)),
        hostname: daemon::hostname(),
        token: args.client.token(),
        advertise_host: args.client.advertise_host,
        allow_daemon_urls: args.allow_daemon_urls,
        dap_allow_peers: args.client.dap_allow_peers,
        health_timeout,
        register_timeout,
        unregister_timeout,
        build: detrix_agent::buildinfo::for_process(
            args.pid,
            &detrix_agent::buildinfo::Explicit {
                commit: args.build_commit.clone(),
                tag: args.build_tag.clone(),
            },
        ),
        cpu_budget,
    };
    let dap_record = args.dap_record.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the event loop")?;
    let reason = rt.block_on(async move {
        let (engine, reader) = Engine::start(resolver).context("loading the eBPF program")?;
        let (mut agent, handle) = Agent::new(cfg.clone(), engine, reader);
        if let Some(path) = &dap_record {
            let rec = daemon::DapRecorder::create(path).with_context(|| format!("creating the DAP recording {}", path.display()))?;
            agent.record_dap(rec);
        }
        let listener = tokio::net::TcpListener::bind((cfg.control_host.as_str(), cfg.control_port))
            .await
            .with_context(|| format!("binding the control plane to {}:{} (choose another --control-port, or 0 for any)", cfg.control_host, cfg.control_port))?;
        let port = listener.local_addr().context("reading the control plane's port")?.port();
        handle.set_control_port(port);
        let shown_host = if cfg.control_host == "0.0.0.0" || cfg.control_host == "::" { "127.0.0.1" } else { cfg.control_host.as_str() };
        agent.set_control_url(format!("http://{shown_host}:{port}"));
        // Everything that needed more is done (files opened, sockets bound, eBPF loaded).
        let r = detrix_agent::privs::restrict().context("dropping the capabilities the agent does not use")?;
        tracing::info!(kept = ?r.kept, missing = ?r.missing, "capabilities reduced; no_new_privs set");
        {
            use std::io::Write as _;
            // The one line the upstream conformance harness reads to find the control plane.
            let mut out = std::io::stdout().lock();
            writeln!(out, "Control plane: http://{shown_host}:{port}").context("writing to stdout")?;
            out.flush().context("writing to stdout")?;
        }
        eprintln!(
            "attach: pid {} as `{}` (language {}), daemon {}, sleeping; POST /detrix/wake to connect",
            cfg.pid, cfg.name, cfg.language, cfg.daemon_url
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(detrix_agent::control::serve(listener, handle, async move {
            let _ = stop_rx.await;
        }));
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing a SIGTERM handler")?;
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).context("installing a SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = sigint.recv() => {}
            }
        };
        let reason = agent.run(shutdown).await;
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
        anyhow::Ok(reason)
    })?;
    match reason {
        ExitReason::TargetExited => eprintln!(
            "attach: process {} exited; unregistered, all probes removed",
            args.pid
        ),
        ExitReason::Shutdown => eprintln!("attach: stopped; unregistered, all probes removed"),
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    use detrix_agent::daemon;
    use detrix_agent::discover::tracker::Tracker;
    use detrix_agent::serve::{config, control, host};
    let flags = config::Flags {
        config: args.config,
        select: args.select,
        wake: args.wake,
        daemon_url: args.daemon_url,
        control_host: args.control_host,
        control_port: args.control_port,
        kubernetes: args.kubernetes,
    };
    let cfg = config::load(&flags)?;
    let node = if args.kubernetes {
        let node = args.node_name.clone().filter(|n| !n.is_empty()).context(
            "--kubernetes needs this node's name: set NODE_NAME (the downward API's spec.nodeName) or --node-name",
        )?;
        let selector =
            detrix_agent::pods::PodSelector::parse(args.pod_selector.as_deref().unwrap_or(""))
                .map_err(anyhow::Error::msg)?;
        Some(detrix_agent::pods::watch::Options { node, selector })
    } else {
        None
    };
    let token = args.client.token();
    let [health_timeout, register_timeout, unregister_timeout] = args.client.timeouts()?;
    let cpu_budget = args.client.cpu_budget()?;
    if !(args.host_cpu_budget.is_finite() && args.host_cpu_budget >= 0.0) {
        anyhow::bail!(
            "--host-cpu-budget {} is not a percentage of one CPU; pass a number ≥ 0 (0 = no host budget)",
            args.host_cpu_budget
        );
    }
    let host_cpu_budget = args.host_cpu_budget / 100.0;
    // Debug info is read on blocking threads (one per target starting); they go 2 s after
    // the last start rather than tokio's default 10 s.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .build()
        .context("start the event loop")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((cfg.control_host.as_str(), cfg.control_port))
            .await
            .with_context(|| {
                format!(
                    "binding the control plane to {}:{} (choose another --control-port, or 0 for any)",
                    cfg.control_host, cfg.control_port
                )
            })?;
        let port = listener.local_addr().context("reading the control plane's port")?.port();
        let shown_host = if cfg.control_host == "0.0.0.0" || cfg.control_host == "::" {
            "127.0.0.1"
        } else {
            cfg.control_host.as_str()
        };
        let control_url = format!("http://{shown_host}:{port}");
        // Node mode: the API client reads its configuration (token, CA) while every file is
        // still readable.
        let kube = match &node {
            Some(_) => Some(detrix_agent::pods::watch::client().await?),
            None => None,
        };
        let tracker = Tracker::open().context(
            "subscribing to process events (the netlink process connector needs root or CAP_NET_ADMIN, in the host's PID namespace)",
        )?;
        let host = host::Host::new(host::Settings {
            control_host: cfg.control_host.clone(),
            control_port: port,
            control_url: control_url.clone(),
            advertise_host: args.client.advertise_host,
            dap_allow_peers: args.client.dap_allow_peers,
            hostname: daemon::hostname(),
            token,
            health_timeout,
            register_timeout,
            unregister_timeout,
            cpu_budget,
            host_cpu_budget,
        });
        // One eBPF program for every target, loaded while the rest starts.
        host.preload();
        {
            // The one line the upstream conformance harness reads to find the control plane.
            let mut out = std::io::stdout().lock();
            writeln!(out, "Control plane: {control_url}").context("writing to stdout")?;
            out.flush().context("writing to stdout")?;
        }
        match &node {
            Some(n) => eprintln!(
                "serve: node mode, pods of node {} ({}), {} file rule(s), wake {:?}, daemon {}; GET /detrix/targets to list targets",
                n.node,
                if n.selector.is_some() { "label selector or annotation" } else { "annotation detrix.dev/observe only" },
                cfg.rules.len(),
                cfg.wake,
                cfg.daemon_url
            ),
            None => eprintln!(
                "serve: {} rule(s), wake {:?}, daemon {}; GET /detrix/targets to list targets",
                cfg.rules.len(),
                cfg.wake,
                cfg.daemon_url
            ),
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // Daemons whose users may call the host control plane without the token.
        let daemon_urls: Vec<String> = std::iter::once(cfg.daemon_url.clone())
            .chain(cfg.rules.iter().filter_map(|r| r.daemon_url.clone()))
            .collect();
        // Sockets bound, the process connector subscribed: keep only what serve uses.
        let r = detrix_agent::privs::restrict_with(detrix_agent::privs::SERVE_EXTRA)
            .context("dropping the capabilities the agent does not use")?;
        tracing::info!(kept = ?r.kept, missing = ?r.missing, "capabilities reduced; no_new_privs set");
        let server = tokio::spawn(control::serve(listener, host.clone(), daemon_urls, async move {
            let _ = stop_rx.await;
        }));
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing a SIGTERM handler")?;
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("installing a SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = sigint.recv() => {}
            }
        };
        // SIGHUP: read the rules again (same file, same flags); a bad file keeps the old ones.
        // In node mode the file's config goes to the pod watcher, which adds the pods' rules.
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        let reload_tx = match (node, kube) {
            (Some(opts), Some(client)) => {
                let (base_tx, base_rx) = tokio::sync::mpsc::channel(1);
                // Fleet wakes: this node's side of every DetrixWake, over the host's targets.
                tokio::spawn(detrix_agent::fleet::node::run(client.clone(), opts.node.clone(), host.clone()));
                tokio::spawn(detrix_agent::pods::watch::run(client, opts, cfg.clone(), base_rx, reload_tx));
                base_tx
            }
            _ => reload_tx,
        };
        let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing a SIGHUP handler")?;
        tokio::spawn(async move {
            while sighup.recv().await.is_some() {
                match config::load(&flags) {
                    Ok(new) => {
                        eprintln!("serve: rules reloaded: {} rule(s)", new.rules.len());
                        if reload_tx.send(new).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("serve: reload refused, the old rules stay: {e}"),
                }
            }
        });
        let result = host::run(host, cfg, tracker, reload_rx, shutdown).await;
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), server).await;
        result.context("process events stopped")?;
        eprintln!("serve: stopped; every target unregistered, all probes removed");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Resolve(args) if args.coverage => cmd::coverage::run(&args),
        Command::Resolve(args) => {
            let (file, line) = parse_at(args.at.as_deref().unwrap_or_default())?;
            let t0 = std::time::Instant::now();
            let bin = detrix_agent::debuginfo::Binary::open(&args.binary)?;
            let t1 = std::time::Instant::now();
            let out =
                detrix_agent::engine::describe(&bin, &file, line, &args.exprs, &args.strip_prefix);
            if args.timing {
                let t2 = std::time::Instant::now();
                let again = detrix_agent::engine::describe(
                    &bin,
                    &file,
                    line,
                    &args.exprs,
                    &args.strip_prefix,
                );
                let t3 = std::time::Instant::now();
                std::hint::black_box(again);
                eprintln!(
                    "timing: open {:.6} s, first resolve {:.6} s, warm resolve {:.6} s",
                    (t1 - t0).as_secs_f64(),
                    (t2 - t1).as_secs_f64(),
                    (t3 - t2).as_secs_f64()
                );
                // Where the memory is: the heap (parsed units, indexes) vs the mapped file.
                if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
                    let kb = |k: &str| {
                        status
                            .lines()
                            .find_map(|l| l.strip_prefix(k))
                            .map(|v| v.trim().to_owned())
                            .unwrap_or_default()
                    };
                    eprintln!(
                        "memory: peak {}, now: heap {}, mapped file {}",
                        kb("VmHWM:"),
                        kb("RssAnon:"),
                        kb("RssFile:")
                    );
                }
            }
            let failed = out.get("error").is_some();
            // A closed pipe (`| head`) is not an error worth a panic.
            let mut stdout = std::io::stdout().lock();
            if let Err(e) = writeln!(stdout, "{}", serde_json::to_string_pretty(&out)?) {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    return Err(e.into());
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Attach(args) => attach(args),
        Command::Serve(args) => serve(args),
        Command::Fleet(c) => cmd::fleet::run(c),
        Command::DebuggerGuard(a) => {
            let code = detrix_agent::fallback::guard::run(&detrix_agent::fallback::guard::Args {
                agent: a.agent,
                target: a.target,
                relay: a.relay,
                command: a.command,
            });
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Command::Capture(args) => cmd::capture::run(args),
    }
}
