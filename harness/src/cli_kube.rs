//! The command line of the kube platform: cluster flags shared by `run`, `render` and `gc`,
//! `zonebench render` (every manifest a run would create) and `zonebench gc` (leftovers of
//! killed runs). Kept out of `main.rs` so the other commands' code stays readable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio_util::sync::CancellationToken;

use zonebench::model::{ClusterTopology, Fingerprint, Node};
use zonebench::plan;
use zonebench::platform::kube::{self, manifests, ClusterSource, KubeOptions, KubePlatform};
use zonebench::run::{self, RunOptions, RunOutcome};
use zonebench::scenario::Scenario;

/// Which cluster(s) to use.
#[derive(Args, Debug, Default, Clone)]
pub struct ClusterArgs {
    /// kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context (default: the current one). `--context A=ctx-a --context B=ctx-b`
    /// runs the scenario on each cluster into one run, labelled A and B as the variant.
    #[arg(long = "context", value_name = "[LABEL=]CONTEXT")]
    pub contexts: Vec<String>,
}

impl ClusterArgs {
    pub fn given(&self) -> bool {
        self.kubeconfig.is_some() || !self.contexts.is_empty()
    }

    /// The one cluster of `render --discover` and `gc`.
    pub fn single(&self) -> Result<ClusterSource, String> {
        match self.targets()?.as_slice() {
            [] => Ok(ClusterSource { kubeconfig: self.kubeconfig.clone(), context: None }),
            [(None, ctx)] => Ok(ClusterSource { kubeconfig: self.kubeconfig.clone(), context: Some(ctx.clone()) }),
            _ => Err("this command takes one --context, without a label".into()),
        }
    }

    /// `(label, context)` of each `--context`; labelled all or none, labels unique.
    pub fn targets(&self) -> Result<Vec<(Option<String>, String)>, String> {
        let mut out: Vec<(Option<String>, String)> = Vec::new();
        for c in &self.contexts {
            let (label, ctx) = match c.split_once('=') {
                Some((l, ctx)) => {
                    if l.is_empty() || !l.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
                        return Err(format!("--context {c}: the label {l:?} must be letters, digits, '-', '_' or '.'"));
                    }
                    (Some(l.to_string()), ctx)
                }
                None => (None, c.as_str()),
            };
            if ctx.is_empty() {
                return Err(format!("--context {c}: no context name"));
            }
            if out.iter().any(|(l, _)| l.is_some() && *l == label) {
                return Err(format!("--context {c}: the label is used twice"));
            }
            out.push((label, ctx.to_string()));
        }
        let labelled = out.iter().filter(|(l, _)| l.is_some()).count();
        if out.len() > 1 && labelled != out.len() {
            return Err("several --context flags need a label each: --context A=ctx-a --context B=ctx-b".into());
        }
        Ok(out)
    }
}

/// `zonebench render`.
#[derive(Args, Debug)]
pub struct RenderArgs {
    /// Scenario file.
    #[arg(default_value = "scenarios/quick.toml")]
    pub scenario: PathBuf,
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub set: Vec<String>,
    /// Agent image (over the scenario's kube.image); with `--cronjob`, the image holding
    /// zonebench (default ghcr.io/zonebench/zonebench:VERSION).
    #[arg(long)]
    pub image: Option<String>,
    /// Place agents on a real cluster's nodes (read-only discovery) instead of placeholders
    /// built from the scenario's [lab] zones.
    #[arg(long)]
    pub discover: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Include the privileged node-inspector DaemonSet (what `--inspect-nodes` deploys).
    #[arg(long)]
    pub inspect_nodes: bool,
    /// Image of the node inspector (bash, iptables-save, nft).
    #[arg(long, default_value = DEFAULT_INSPECTOR_IMAGE)]
    pub inspect_image: String,
    /// Render the nightly CronJob (with its ServiceAccount and RBAC) that runs SCENARIO.
    #[arg(long)]
    pub cronjob: bool,
    /// Cron schedule.
    #[arg(long, default_value = "0 2 * * *", requires = "cronjob")]
    pub schedule: String,
    /// IANA time zone of the schedule (e.g. Europe/Berlin).
    #[arg(long, requires = "cronjob")]
    pub time_zone: Option<String>,
    /// Namespace of the CronJob.
    #[arg(long, default_value = "zonebench", requires = "cronjob")]
    pub namespace: String,
    /// A baseline results.json to compare each run with; the Job fails on a regression.
    #[arg(long, requires = "cronjob")]
    pub baseline: Option<PathBuf>,
    /// A PersistentVolumeClaim to keep run directories in (default: an emptyDir; results in the logs only).
    #[arg(long, requires = "cronjob")]
    pub results_pvc: Option<String>,
}

/// The node inspector's default image: netshoot ships bash, iptables and nftables (the
/// Kubernetes debian-iptables build image has no `nft`, so nftables-mode clusters would get
/// no counts). Any image with bash and the counting tools will do (`--inspect-image`).
pub const DEFAULT_INSPECTOR_IMAGE: &str = "nicolaka/netshoot:v0.13";

/// `zonebench gc`.
#[derive(Args, Debug)]
pub struct GcArgs {
    /// Only runs at least this old (a run in progress elsewhere is younger).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub older_than: Duration,
    /// List what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `zonebench render`: one dispatch, so other renderings (`--cronjob`) slot in here.
pub async fn cmd_render(args: RenderArgs) -> anyhow::Result<ExitCode> {
    if args.cronjob {
        return render_cronjob(&args);
    }
    render_run(&args).await
}

fn render_cronjob(args: &RenderArgs) -> anyhow::Result<ExitCode> {
    let opts = zonebench::render::cronjob::CronJobOptions {
        schedule: args.schedule.clone(),
        time_zone: args.time_zone.clone(),
        namespace: args.namespace.clone(),
        image: args.image.clone().unwrap_or_else(zonebench::render::cronjob::default_image),
        baseline: args.baseline.clone(),
        results_pvc: args.results_pvc.clone(),
    };
    zonebench::commands::render_cronjob_cmd(&args.scenario, opts)
}

async fn render_run(args: &RenderArgs) -> anyhow::Result<ExitCode> {
    let scenario = match Scenario::load(&args.scenario, &args.set) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let options = KubeOptions {
        source: match args.cluster.single() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(2));
            }
        },
        image: args.image.clone(),
        settings: scenario.kube.clone(),
        scenario: scenario.name.clone(),
        inspector_image: args.inspect_nodes.then(|| args.inspect_image.clone()),
        run_id: Some("render".into()),
        variants: Vec::new(),
    };
    let (topology, whence) = if args.discover {
        let cluster = kube::client::connect(&options.source).await?;
        let t = kube::discovery::discover(&cluster).await?;
        (t, format!("nodes discovered on {}", cluster.describe()))
    } else {
        (
            placeholder_topology(&scenario),
            "placeholder nodes from the scenario's [lab] table (--discover places them on a cluster's nodes)"
                .to_string(),
        )
    };
    let plan = plan::expand(&scenario, &topology)?;
    let mut platform = KubePlatform::new(options)?;
    platform.set_nodes(topology.nodes.clone());
    let mut m = platform.manifests(&plan.agent_requests())?;
    m.secret.string_data = Some([("token".to_string(), "GENERATED-PER-RUN".to_string())].into());
    let mut objects = m.objects();
    let (services, notes) = zonebench::render::services(platform.run(), &scenario, &plan, &topology.nodes)?;
    objects.extend(services);
    for o in &objects {
        for (path, spec) in kube::pss::pod_specs(o) {
            let v = kube::pss::restricted_violations(spec);
            if !v.is_empty() && o["kind"] != "DaemonSet" {
                eprintln!("warning: {path} breaks the restricted Pod Security Standard: {}", v.join("; "));
            }
        }
    }
    let header = format!(
        "zonebench render {}: what `zonebench run --backend kube` creates for scenario {:?}.\n\
         Run id \"{}\" and the control token are generated per run; agents are on {whence}.",
        args.scenario.display(),
        scenario.name,
        platform.run().run_id
    );
    let header = notes.iter().fold(header, |h, n| format!("{h}\n{n}"));
    let yaml = manifests::to_yaml(&header, &objects).map_err(anyhow::Error::msg)?;
    print!("{yaml}");
    Ok(ExitCode::SUCCESS)
}

/// The scenario's `[lab]` zones as nodes named `<zone>-node-<n>`, for rendering without a cluster.
fn placeholder_topology(s: &Scenario) -> ClusterTopology {
    let nodes: Vec<Node> = s
        .lab
        .zones
        .iter()
        .flat_map(|z| {
            (1..=s.lab.nodes_per_zone).map(move |i| Node {
                name: format!("{z}-node-{i}"),
                zone: z.clone(),
                cpu_millis: 2000,
                ready: true,
            })
        })
        .collect();
    let fingerprint =
        Fingerprint { platform: "kube".into(), zones: s.lab.zones.clone(), nodes: nodes.len(), ..Default::default() };
    ClusterTopology { nodes, fingerprint }
}

/// `zonebench gc`.
pub async fn cmd_gc(args: GcArgs) -> anyhow::Result<ExitCode> {
    let source = match args.cluster.single() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let cluster = kube::client::connect(&source).await?;
    let found = kube::gc::gc(&cluster, args.older_than, args.dry_run).await?;
    if found.is_empty() {
        eprintln!(
            "no zonebench namespaces older than {} on {}",
            humantime::format_duration(args.older_than),
            cluster.describe()
        );
    }
    for l in &found {
        let what = match (l.deleted, l.terminating, args.dry_run) {
            (true, _, _) => "deleted",
            (_, true, _) => "already terminating",
            (_, _, true) => "would delete",
            _ => "kept",
        };
        println!(
            "{what} {} (run {}, scenario {}, age {})",
            l.namespace,
            l.run,
            if l.scenario.is_empty() { "?" } else { &l.scenario },
            humantime::format_duration(Duration::from_secs(l.age_secs))
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The images a kube run uses: `--image` (over the scenario's), and the node inspector's
/// when `--inspect-nodes` is given.
#[derive(Debug, Clone, Default)]
pub struct Images {
    pub agent: Option<String>,
    pub inspector: Option<String>,
}

/// `zonebench run --backend kube`: one cluster, or each labelled `--context` in turn.
pub async fn run_kube(
    scenario: &Scenario,
    cluster: &ClusterArgs,
    targets: Vec<(Option<String>, String)>,
    images: Images,
    opts: &RunOptions,
    cancel: &CancellationToken,
) -> anyhow::Result<RunOutcome> {
    let options = |context: Option<String>| KubeOptions {
        source: ClusterSource { kubeconfig: cluster.kubeconfig.clone(), context },
        image: images.agent.clone(),
        settings: scenario.kube.clone(),
        scenario: scenario.name.clone(),
        inspector_image: images.inspector.clone(),
        run_id: None,
        variants: Vec::new(),
    };
    let kubeconfig =
        cluster.kubeconfig.as_ref().map_or("the default kubeconfig".to_string(), |p| p.display().to_string());
    let mut image_shown = options(None).image();
    if let Some(i) = &images.inspector {
        image_shown.push_str(&format!("; node inspector {i}, privileged"));
    }
    if targets.iter().all(|(l, _)| l.is_none()) {
        let context = targets.into_iter().next().map(|(_, c)| c);
        let mut p = KubePlatform::new(options(context.clone()))?;
        eprintln!(
            "platform: kube (context {}, {kubeconfig}; image {image_shown}; namespace {})",
            context.as_deref().unwrap_or("current"),
            p.run().namespace()
        );
        return run::run(&mut p, scenario, opts, cancel).await;
    }
    let mut platforms = Vec::new();
    for (label, context) in targets {
        let label = label.context("labelled contexts were checked")?;
        platforms.push((label, KubePlatform::new(options(Some(context)))?));
    }
    let shown: Vec<String> =
        platforms.iter().map(|(l, p)| format!("{l}={} ({})", cluster_context(p), p.run().namespace())).collect();
    eprintln!(
        "platform: kube on {} clusters in turn: {} ({kubeconfig}; image {image_shown})",
        shown.len(),
        shown.join(", ")
    );
    run::run_each(&mut platforms, scenario, opts, cancel).await
}

fn cluster_context(p: &KubePlatform) -> String {
    p.source().context.clone().unwrap_or_else(|| "current".into())
}
