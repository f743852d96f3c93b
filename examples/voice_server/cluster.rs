//! `voice_server --nats URL`: the calls' sessions on the cluster's workers
//! (`examples/worker.rs`); the audio — hearing, speaking, the playout clock —
//! stays in this process. A worker killed mid-call: the turn in flight is
//! cut, and the call goes on with its history on another worker.

use std::sync::Arc;

use colloquy::audio::Synthesizer;
use colloquy_actors::calls::CallServices;
use colloquy_actors::cluster::{ClusterClient, SessionSpec, SpecMode, connect_with};
use colloquy_actors::turn_taking::InterruptionMode;

use crate::nats_flags::NatsFlags;

/// Call services whose sessions are placed on the workers behind `url`.
pub(crate) async fn services(
    url: &str,
    login: &NatsFlags,
    voice: Arc<dyn Synthesizer>,
    mode: InterruptionMode,
    model: Option<String>,
    instructions: &str,
) -> Result<CallServices, Box<dyn std::error::Error>> {
    let options = login.options()?;
    let nats = connect_with(url, "voice_server", &options).await?;
    let client = ClusterClient::new(nats);
    let mut spec = SessionSpec {
        // None: the worker's model.
        model,
        instructions: Some(instructions.to_string()),
        ..SessionSpec::default()
    };
    spec.interruption.mode = match mode {
        InterruptionMode::Immediate => SpecMode::Immediate,
        _ => SpecMode::Confirmed,
    };
    Ok(CallServices::on_cluster(
        client,
        move |_| spec.clone(),
        voice,
    ))
}
