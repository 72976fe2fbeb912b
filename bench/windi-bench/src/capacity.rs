//! `capacity`: what one relay node, one Postgres primary and the API carry, on paper, from the
//! figures the other scenarios measured (issue 11, item 8), and where the first wall is at
//! 1M concurrent users sending 10k messages a second.
//!
//! Nothing is measured here: the inputs are the figures of the same run (`all`), or, run on
//! its own, those of the last run in `target/bench/latest.json`. The arithmetic is in
//! [`model`], pure, so its assumptions are in one place:
//!
//! - A relay node has [`RELAY_NODE_GIB`] of memory for sockets and the cores of this machine;
//!   CPU per delivery is this machine's fan-out rate divided by its cores (the load generator
//!   shares those cores, so this is pessimistic).
//! - A message reaches [`DELIVERIES_PER_MESSAGE`] sockets on average (a private chat's two
//!   members on one or two devices, some groups).
//! - Postgres: the send transaction's rate under pgbench on this machine's cores, per core,
//!   scaled linearly to a primary's cores (optimistic: WAL and locks do not scale linearly).

use anyhow::Context as _;
use serde_json::Value;

use crate::{harness::Ctx, report::Figure};

/// Memory a relay node gives to sockets.
pub const RELAY_NODE_GIB: f64 = 16.0;
/// Average sockets a message is delivered to.
pub const DELIVERIES_PER_MESSAGE: f64 = 4.0;
/// The load the issue asks about.
pub const USERS: f64 = 1_000_000.0;
pub const MESSAGES_PER_SEC: f64 = 10_000.0;
/// A big primary.
pub const PRIMARY_CORES: f64 = 64.0;

/// What the model needs, each the median of a measured figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    pub cores: f64,
    pub kib_per_socket: f64,
    pub deliveries_per_sec: f64,
    pub api_sends_per_sec: f64,
    pub pg_sends_per_sec: f64,
    pub hot_chat_sends_per_sec: f64,
}

pub async fn run(ctx: &Ctx, earlier: &[Figure]) -> anyhow::Result<Vec<Figure>> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let (figures, source) = if earlier.is_empty() {
        let path = ctx.repo.join("target/bench/latest.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "capacity needs the other scenarios' figures: run `all`, or run them first \
                 (cannot read {})",
                path.display()
            )
        })?;
        let report: Value = serde_json::from_str(&text)?;
        let figures = report["figures"].as_array().cloned().unwrap_or_default();
        (figures, format!("from {}", path.display()))
    } else {
        let figures = earlier
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()?;
        (figures, "from this run".to_owned())
    };
    let inputs = inputs(&figures, cores)?;
    Ok(model(inputs)
        .into_iter()
        .map(|f| {
            let note = format!("{} (inputs {source})", f.note.clone().unwrap_or_default());
            f.note(note)
        })
        .collect())
}

/// The median (or the baseline's median) of the first figure of `scenario` whose name
/// contains `part`.
fn median(figures: &[Value], scenario: &str, part: &str, baseline: bool) -> Option<f64> {
    let figure = figures.iter().find(|f| {
        f["scenario"] == scenario && f["name"].as_str().is_some_and(|n| n.contains(part))
    })?;
    let value = if baseline {
        &figure["baseline"]["value"]
    } else {
        &figure["value"]
    };
    value["median"].as_f64()
}

fn inputs(figures: &[Value], cores: f64) -> anyhow::Result<Inputs> {
    let need = |scenario: &str, part: &str, baseline: bool| {
        median(figures, scenario, part, baseline).with_context(|| {
            format!("no `{scenario}` figure named `…{part}…`: run that scenario first")
        })
    };
    Ok(Inputs {
        cores,
        kib_per_socket: need("connections", "memory per idle socket", false)?,
        deliveries_per_sec: need("fanout", "deliveries/s", false)?,
        api_sends_per_sec: need("send", "private chats", false)?,
        pg_sends_per_sec: need("send", "private chats", true)?,
        hot_chat_sends_per_sec: need("send", "one group", false)?,
    })
}

/// The model; see the module docs for its assumptions.
pub fn model(i: Inputs) -> Vec<Figure> {
    let per_node_sockets = RELAY_NODE_GIB * 1024.0 * 1024.0 / i.kib_per_socket;
    let nodes_for_memory = (USERS / per_node_sockets).ceil();
    let deliveries_per_core = i.deliveries_per_sec / i.cores;
    let relay_cores = MESSAGES_PER_SEC * DELIVERIES_PER_MESSAGE / deliveries_per_core;
    let pg_per_core = i.pg_sends_per_sec / i.cores;
    let pg_cores = MESSAGES_PER_SEC / pg_per_core;
    // windi's API share of a send: what it adds over raw Postgres on the same cores.
    let api_cores = MESSAGES_PER_SEC * i.cores / i.api_sends_per_sec - pg_cores;
    let one = |name: &str, unit: &str, value: f64, note: String| {
        Figure::new("capacity", name, unit, &[value]).note(note)
    };
    vec![
        one(
            "idle sockets per relay node",
            "sockets",
            per_node_sockets,
            format!(
                "{RELAY_NODE_GIB} GiB for sockets / {:.1} KiB per idle socket",
                i.kib_per_socket
            ),
        ),
        one(
            "relay nodes for 1M connected users (memory)",
            "nodes",
            nodes_for_memory,
            "one socket per user; relays sit behind a load balancer and share events via NATS"
                .into(),
        ),
        one(
            "relay cores for 10k msg/s",
            "cores",
            relay_cores,
            format!(
                "{MESSAGES_PER_SEC} msg/s x {DELIVERIES_PER_MESSAGE} deliveries / \
                 {deliveries_per_core:.0} deliveries/s per core (this machine's fan-out)"
            ),
        ),
        one(
            "Postgres cores for 10k sends/s",
            "cores",
            pg_cores,
            format!(
                "{pg_per_core:.0} send transactions/s per core (pgbench here), scaled linearly; \
                 one primary has {PRIMARY_CORES} cores at most: past that, chats are sharded \
                 across primaries by chat id (a send touches one chat's rows only)"
            ),
        ),
        one(
            "API cores for 10k sends/s (beyond Postgres)",
            "cores",
            api_cores.max(0.0),
            "stateless handlers: any number behind the load balancer (or Lambda)".into(),
        ),
        one(
            "one chat's ceiling",
            "msg/s",
            i.hot_chat_sends_per_sec,
            "every send into one chat takes that chat's row lock: a single chat cannot go \
             faster than this whatever is added"
                .into(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_the_arithmetic_its_notes_say() {
        let figures = model(Inputs {
            cores: 2.0,
            kib_per_socket: 16.0,
            deliveries_per_sec: 40_000.0,
            api_sends_per_sec: 2_000.0,
            pg_sends_per_sec: 2_500.0,
            hot_chat_sends_per_sec: 700.0,
        });
        let value = |name: &str| {
            figures
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.value.median)
                .expect("figure")
        };
        assert_eq!(value("idle sockets per relay node"), 1_048_576.0);
        assert_eq!(value("relay nodes for 1M connected users (memory)"), 1.0);
        assert_eq!(value("relay cores for 10k msg/s"), 2.0);
        assert_eq!(value("Postgres cores for 10k sends/s"), 8.0);
        assert_eq!(value("API cores for 10k sends/s (beyond Postgres)"), 2.0);
        assert_eq!(value("one chat's ceiling"), 700.0);
    }
}
