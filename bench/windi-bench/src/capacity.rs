//! The `capacity` scenario (issue 11). Not written yet.

use crate::{harness::Ctx, report::Figure};

pub async fn run(_ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    anyhow::bail!("the capacity scenario is not written yet")
}
