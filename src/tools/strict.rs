//! OpenAI strict-mode schemas.
//!
//! Strict mode requires every object to list all its properties as required and
//! to forbid additional properties. This is the reference plugin's
//! `prepare_strict_schema`: it walks the whole schema — nested objects, array
//! items, `anyOf` branches and `$defs` — because a nested object left loose makes
//! the provider reject the request.

use serde_json::Value;

/// Makes a JSON schema strict: every object (at any depth) gets
/// `additionalProperties: false` and `required` listing all its properties.
pub fn strict_schema(mut schema: Value) -> Value {
    make_strict(&mut schema);
    schema
}

fn is_object_type(t: Option<&Value>) -> bool {
    match t {
        Some(Value::String(s)) => s == "object",
        Some(Value::Array(types)) => types.iter().any(|t| t == "object"),
        _ => false,
    }
}

fn make_strict(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if is_object_type(map.get("type")) {
                map.insert("additionalProperties".into(), Value::Bool(false));
                if let Some(Value::Object(props)) = map.get("properties") {
                    let all: Vec<Value> = props.keys().map(|k| Value::String(k.clone())).collect();
                    map.insert("required".into(), Value::Array(all));
                }
            }
            for (_, child) in map.iter_mut() {
                make_strict(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(make_strict),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_objects_arrays_anyof_and_defs() {
        let schema = json!({
            "type": "object",
            "properties": {
                "a": {"type": "string"},
                "inner": {"type": "object", "properties": {"x": {"type": "integer"}}},
                "list": {"type": "array", "items": {"type": "object", "properties": {"y": {"type": "number"}}}},
                "either": {"anyOf": [{"type": "object", "properties": {"z": {"type": "boolean"}}}, {"type": "null"}]},
                "ref": {"$ref": "#/$defs/Thing"}
            },
            "$defs": {"Thing": {"type": "object", "properties": {"k": {"type": "string"}}}}
        });
        let s = strict_schema(schema);
        assert_eq!(s["additionalProperties"], json!(false));
        assert_eq!(
            s["required"],
            json!(["a", "inner", "list", "either", "ref"])
        );
        assert_eq!(s["properties"]["inner"]["required"], json!(["x"]));
        assert_eq!(
            s["properties"]["inner"]["additionalProperties"],
            json!(false)
        );
        assert_eq!(s["properties"]["list"]["items"]["required"], json!(["y"]));
        assert_eq!(
            s["properties"]["either"]["anyOf"][0]["additionalProperties"],
            json!(false)
        );
        assert_eq!(s["$defs"]["Thing"]["required"], json!(["k"]));
        // Non-object schemas are untouched.
        assert_eq!(s["properties"]["a"], json!({"type": "string"}));
    }
}
