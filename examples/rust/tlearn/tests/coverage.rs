//! Every function of include/tlearn/tlearn.h is declared in tlearn-sys and called by the
//! safe crate, so the bindings grow with the header.
use std::collections::BTreeSet;

fn names_after(text: &str, marker: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices(marker) {
        let rest = &text[i + marker.len()..];
        let rest = rest.trim_start();
        // the function name is the first identifier starting with tlearn_ before '('
        if let Some(open) = rest.find('(') {
            let head = &rest[..open];
            if let Some(pos) = head.rfind("tlearn_") {
                let name = &head[pos..];
                if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    out.insert(name.to_string());
                }
            }
        }
    }
    out
}

#[test]
fn bindings_cover_the_header() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../..");
    let header = std::fs::read_to_string(format!("{root}/include/tlearn/tlearn.h")).unwrap();
    let sys = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"),
                                              "/../tlearn-sys/src/lib.rs")).unwrap();
    let safe = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs"))
        .unwrap();
    let in_header = names_after(&header, "TLEARN_API");
    assert!(in_header.len() > 70, "found only {} functions in the header", in_header.len());
    let in_sys = names_after(&sys, "pub fn");
    assert_eq!(in_header, in_sys, "tlearn-sys and the header differ");
    let unwrapped: Vec<_> = in_header.iter()
        .filter(|n| !safe.contains(&format!("sys::{n}(")))
        .collect();
    assert!(unwrapped.is_empty(), "the safe crate never calls {unwrapped:?}");
}
