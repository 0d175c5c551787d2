//! The zone-matrix driver: every step of the plan in order, to a server agent or through
//! one of the plan's Services (created once, before the first step).

use std::collections::BTreeMap;

use anyhow::Context as _;

use super::session::{Flow, Session};
use super::step::{attach_locality, until_cancelled};
use crate::model::DeployedService;
use crate::plan::Plan;
use crate::platform::Platform;

pub(super) async fn drive<P: Platform>(platform: &mut P, mut session: Session<'_>) -> anyhow::Result<()> {
    let services: BTreeMap<String, DeployedService> = if session.plan.services.is_empty() {
        BTreeMap::new()
    } else {
        let applied = until_cancelled(session.cancel, platform.apply_services(&session.plan.services, None))
            .await?
            .context("creating Services")?;
        applied.services.into_iter().map(|s| (s.name.clone(), s)).collect()
    };
    let bar = session.progress(platform, session.plan.steps.len() as u64);
    let steps = session.plan.steps.clone();
    let mut rest = &steps[..];
    while let Some(step) = rest.first() {
        if session.cancel.is_cancelled() {
            break;
        }
        // A concurrent group is the run of adjacent steps with its id; it runs at once.
        let len = match &step.group {
            Some(id) => rest.iter().take_while(|s| s.group.as_ref() == Some(id)).count(),
            None => 1,
        };
        let (now, later) = rest.split_at(len);
        rest = later;
        let plan = &session.plan;
        let flow = if step.search.is_some() {
            session.record_search(step, &services, &bar, |m, plan, s| attach_locality(m, plan, s, &services)).await?
        } else if step.group.is_some() {
            bar.set_message(format!("{} ×{} → {}", step.name, now.len(), step.server));
            session.record_group(now, &services, &bar, |m, plan, s| attach_locality(m, plan, s, &services)).await?
        } else {
            bar.set_message(format!("{} {}→{}", step.name, zone_of(plan, &step.client), zone_of(plan, &step.server)));
            let what = || format!("{} {} → {}", step.name, step.client, step.server);
            session
                .record(step, &services, &bar, what, BTreeMap::new(), |m, plan| {
                    attach_locality(m, plan, step, &services)
                })
                .await?
        };
        if flow == Flow::Stop {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(())
}

fn zone_of<'a>(plan: &'a Plan, id: &str) -> &'a str {
    plan.placement(id).map_or("?", |p| p.zone.as_str())
}
