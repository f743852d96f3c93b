//! The GenAI semantic conventions' client metrics under their default names
//! (one test per binary: the recorder is process-global; the opt-in names
//! are in `genai_metrics_latest.rs`).

#[path = "support/genai.rs"]
mod genai;

use genai::OK;

#[tokio::test]
async fn requests_record_the_default_gen_ai_metrics() {
    let r = genai::run().await;
    let get = |k: &str| {
        r.get(k)
            .unwrap_or_else(|| panic!("{k} missing; have {:?}", r.keys()))
    };
    assert_eq!(
        get(&format!("gen_ai.client.operation.duration{{{OK}}}")).len(),
        1
    );
    assert_eq!(
        get(&format!(
            "gen_ai.client.operation.time_to_first_chunk{{{OK}}}"
        ))
        .len(),
        1
    );
    assert_eq!(
        get(&format!(
            "gen_ai.client.token.usage{{{OK},gen_ai.token.type=input}}"
        )),
        &vec![12.0]
    );
    assert_eq!(
        get(&format!(
            "gen_ai.client.token.usage{{{OK},gen_ai.token.type=output}}"
        )),
        &vec![3.0]
    );
    let refused = "error.type=http,gen_ai.operation.name=chat,gen_ai.provider.name=openai,gen_ai.request.model=gpt-refused";
    assert_eq!(
        get(&format!("gen_ai.client.operation.duration{{{refused}}}")).len(),
        1
    );
    assert!(
        !r.keys().any(|k| k.starts_with("gen_ai.client.inference")),
        "no opt-in names unasked: {:?}",
        r.keys()
    );
}
