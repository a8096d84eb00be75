//! `scoot-integration`: Scoot's integration flow against local clusters. See `scoot_integration_flows::integration`.

fn main() -> anyhow::Result<()> {
    scoot_integration_flows::main_of("scoot-integration", |options| async move {
        scoot_integration_flows::integration::run(&options).await
    })?;
    Ok(())
}
