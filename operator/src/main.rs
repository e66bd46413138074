//! `xturn-operator` will reconcile Gateway API resources into running relays (issue 7).
//! Until then it says so and exits non-zero rather than pretending to work.
fn main() -> anyhow::Result<()> {
    anyhow::bail!("xturn-operator is not implemented yet; see docs/architecture.md (operator)")
}
