//! `OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental` switches the
//! GenAI metrics to the newer client-inference names.

#[path = "support/genai.rs"]
mod genai;

use genai::OK;

#[test]
fn the_opt_in_variable_switches_to_the_client_inference_names() {
    // Set before any thread of this binary exists (the runtime is built
    // after), and read once by the library at its first request.
    unsafe {
        std::env::set_var(
            "OTEL_SEMCONV_STABILITY_OPT_IN",
            "http,gen_ai_latest_experimental",
        )
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(genai::run());
    let get = |k: &str| {
        r.get(k)
            .unwrap_or_else(|| panic!("{k} missing; have {:?}", r.keys()))
    };
    assert_eq!(
        get(&format!("gen_ai.client.inference.duration{{{OK}}}")).len(),
        1
    );
    assert_eq!(
        get(&format!(
            "gen_ai.client.inference.time_to_first_chunk{{{OK}}}"
        ))
        .len(),
        1
    );
    assert_eq!(
        get(&format!(
            "gen_ai.client.inference.usage.input_tokens{{{OK}}}"
        )),
        &vec![12.0]
    );
    assert_eq!(
        get(&format!(
            "gen_ai.client.inference.usage.output_tokens{{{OK}}}"
        )),
        &vec![3.0]
    );
    assert!(
        !r.keys()
            .any(|k| k.starts_with("gen_ai.client.operation")
                || k.starts_with("gen_ai.client.token")),
        "only the new names: {:?}",
        r.keys()
    );
}
