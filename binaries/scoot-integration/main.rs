//! `scoot-integration`: Scoot's integration flow against local clusters. See `scoot_harness::integration`.

fn main() -> anyhow::Result<()> {
    scoot_harness::main_of("scoot-integration", |options| async move {
        scoot_harness::integration::run(&options).await
    })?;
    Ok(())
}
