//! `zonebench render`: every manifest a kube run of a scenario would create (or, with
//! `--cronjob`, the nightly CronJob), as multi-document YAML for review and GitOps.

use std::path::PathBuf;

use clap::Args;
use zonebench::model::{ClusterTopology, Fingerprint, Node};
use zonebench::plan;
use zonebench::platform::kube::{self, manifests, KubeOptions, KubePlatform};
use zonebench::render::cronjob;
use zonebench::scenario::{builtin, Scenario};

use super::cluster::{ClusterArgs, DEFAULT_INSPECTOR_IMAGE};
use super::{Exit, Usage};

/// `zonebench render`.
#[derive(Args, Debug)]
pub struct RenderArgs {
    /// A scenario file, or the name of a built-in scenario.
    #[arg(default_value = builtin::DEFAULT)]
    pub scenario: String,
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

/// `zonebench render`: one dispatch, so other renderings (`--cronjob`) slot in here.
pub async fn render(args: RenderArgs) -> anyhow::Result<Exit> {
    if args.cronjob {
        return render_cronjob(&args);
    }
    render_run(&args).await
}

fn render_cronjob(args: &RenderArgs) -> anyhow::Result<Exit> {
    let opts = cronjob::CronJobOptions {
        schedule: args.schedule.clone(),
        time_zone: args.time_zone.clone(),
        namespace: args.namespace.clone(),
        image: args.image.clone().unwrap_or_else(cronjob::default_image),
        baseline: args.baseline.clone(),
        results_pvc: args.results_pvc.clone(),
    };
    match cronjob::render(&args.scenario, &opts) {
        Ok(yaml) => {
            print!("{yaml}");
            Ok(Exit::Success)
        }
        Err(e @ (cronjob::RenderError::Option { .. } | cronjob::RenderError::Scenario(_))) => Err(Usage::of(e).into()),
        Err(e) => Err(e.into()),
    }
}

async fn render_run(args: &RenderArgs) -> anyhow::Result<Exit> {
    let scenario = Scenario::resolve(&args.scenario, &args.set).map_err(Usage::of)?;
    let options = KubeOptions {
        source: args.cluster.single().map_err(Usage)?,
        image: args.image.clone(),
        settings: scenario.kube.clone(),
        scenario: scenario.name.clone(),
        inspector_image: args.inspect_nodes.then(|| args.inspect_image.clone()),
        run_id: Some("render".into()),
        variants: Vec::new(),
        control: Default::default(),
        nodes: None,
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
        args.scenario,
        scenario.name,
        platform.run().run_id
    );
    let header = notes.iter().fold(header, |h, n| format!("{h}\n{n}"));
    let yaml = manifests::to_yaml(&header, &objects).map_err(anyhow::Error::msg)?;
    print!("{yaml}");
    Ok(Exit::Success)
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
