//! `distill bench`: student training and inference throughput.
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> Result<()> {
    anyhow::bail!("bench: not yet")
}
