//! `recoverytest`: Scoot's recovery flow against local clusters. See `scoot_integration_flows::recovery`.

fn main() -> anyhow::Result<()> {
    scoot_integration_flows::main_of("recoverytest", |options| async move {
        scoot_integration_flows::recovery::run(&options).await
    })?;
    Ok(())
}
