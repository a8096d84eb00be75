//! `recoverytest`: Scoot's recovery flow against local clusters. See `scoot_harness::recovery`.

fn main() -> anyhow::Result<()> {
    scoot_harness::main_of("recoverytest", |options| async move {
        scoot_harness::recovery::run(&options).await
    })?;
    Ok(())
}
