//! The key scheme against its golden vectors, byte for byte.

use kvtier_client::format::DType;
use kvtier_client::{block_keys, NamespaceFields, RopePlacement};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    case: String,
    fields: serde_json::Map<String, serde_json::Value>,
    tokens: Vec<u32>,
    fingerprint: String,
    keys: Vec<String>,
}

fn text(fields: &serde_json::Map<String, serde_json::Value>, name: &str) -> Option<String> {
    fields
        .get(name)
        .map(|v| v.as_str().expect("text field").to_string())
}

fn int(fields: &serde_json::Map<String, serde_json::Value>, name: &str) -> u32 {
    fields[name].as_u64().expect("integer field") as u32
}

fn namespace_fields(fields: &serde_json::Map<String, serde_json::Value>) -> NamespaceFields {
    let dtype = match text(fields, "dtype").as_deref() {
        Some("f32") => DType::F32,
        Some("f16") => DType::F16,
        Some("bf16") => DType::BF16,
        other => panic!("unknown dtype {other:?}"),
    };
    let rope = match text(fields, "rope").as_deref() {
        Some("pre") => RopePlacement::Pre,
        _ => RopePlacement::Post,
    };
    NamespaceFields {
        tenant: text(fields, "tenant").unwrap(),
        salt: text(fields, "salt"),
        model_name: text(fields, "model_name").unwrap(),
        weights_digest: text(fields, "weights_digest").unwrap(),
        n_layers: int(fields, "n_layers"),
        n_kv_heads: int(fields, "n_kv_heads"),
        head_dim: int(fields, "head_dim"),
        dtype,
        block_tokens: int(fields, "block_tokens"),
        rope,
        adapter_name: text(fields, "adapter_name"),
        adapter_id: text(fields, "adapter_id"),
    }
}

fn golden() -> Vec<Case> {
    serde_json::from_str(include_str!("data/golden_keys.json")).unwrap()
}

#[test]
fn keys_match_every_golden_vector_byte_for_byte() {
    let cases = golden();
    assert!(cases.len() >= 6);
    for case in cases {
        let fields = namespace_fields(&case.fields);
        let fingerprint = fields.fingerprint();
        assert_eq!(
            hex::encode(fingerprint),
            case.fingerprint,
            "fingerprint of {}",
            case.case
        );
        let keys = block_keys(&fingerprint, &case.tokens, fields.block_tokens as usize);
        let keys: Vec<String> = keys.iter().map(hex::encode).collect();
        assert_eq!(keys, case.keys, "keys of {}", case.case);
    }
}

fn base() -> NamespaceFields {
    namespace_fields(&golden()[0].fields)
}

#[test]
fn tenant_salt_and_adapter_each_change_the_keys() {
    let tokens: Vec<u32> = (0..64).collect();
    let keys_of = |fields: &NamespaceFields| block_keys(&fields.fingerprint(), &tokens, 4);
    let variants = [
        NamespaceFields {
            tenant: "acme".into(),
            ..base()
        },
        NamespaceFields {
            salt: Some("X".into()),
            ..base()
        },
        NamespaceFields {
            adapter_name: Some("X".into()),
            adapter_id: Some("1".into()),
            ..base()
        },
        NamespaceFields {
            adapter_name: Some("X".into()),
            adapter_id: Some("2".into()),
            ..base()
        },
        NamespaceFields {
            adapter_name: Some("Y".into()),
            adapter_id: Some("1".into()),
            ..base()
        },
    ];
    let mut all = vec![keys_of(&base())];
    all.extend(variants.iter().map(keys_of));
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert!(
                a.iter().zip(b).all(|(x, y)| x != y),
                "two namespaces share a key"
            );
        }
    }
}

#[test]
fn a_partial_tail_block_gets_no_key() {
    let fp = base().fingerprint();
    assert_eq!(block_keys(&fp, &[1, 2, 3, 4, 5, 6, 7], 4).len(), 1);
    assert!(block_keys(&fp, &[1, 2, 3], 4).is_empty());
}

const CHILD_ENV: &str = "KVTIER_KEYS_CHILD";

fn sample_keys_hex() -> String {
    let tokens: Vec<u32> = (0..1000).map(|i| (i * 7919) % 49152).collect();
    block_keys(&base().fingerprint(), &tokens, 16)
        .iter()
        .map(hex::encode)
        .collect()
}

/// Run by `same_tokens_give_the_same_keys_in_another_process` in a child process.
#[test]
#[ignore = "helper: runs only inside a child process"]
fn print_keys_for_parent_process() {
    if std::env::var_os(CHILD_ENV).is_some() {
        println!("KEYS={}", sample_keys_hex());
    }
}

#[test]
fn same_tokens_give_the_same_keys_in_another_process() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "print_keys_for_parent_process",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("KEYS="))
        .expect("child printed keys");
    assert_eq!(line, sample_keys_hex());
    assert!(!line.is_empty());
}
