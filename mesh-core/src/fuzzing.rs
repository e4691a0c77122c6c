//! Entry points for the fuzz targets (`fuzz/` in the repository), behind the `fuzzing` feature:
//! **no stability promise**, not for applications. Each runs one parser that takes outside input
//! and returns whether it accepted it; a panic or a hang is the bug the fuzzer looks for.

use std::path::Path;

use crate::identity::{SpiffeId, TrustDomain};

/// Parses `text` as a SPIFFE ID and as a trust domain; an accepted ID must print back as itself
/// and parse again to the same ID.
pub fn spiffe_id(text: &str) -> bool {
    let _ = TrustDomain::new(text);
    match SpiffeId::new(text) {
        Ok(id) => {
            let printed = id.to_string();
            let again = SpiffeId::new(&printed).expect("a printed SPIFFE ID parses again");
            assert_eq!(again, id, "a SPIFFE ID changed when printed and parsed again");
            true
        }
        Err(error) => {
            let _ = error.to_string();
            false
        }
    }
}

/// Parses `text` as a discovery file (`json`: the JSON syntax, else YAML), with every check a
/// file discovery makes; an error's `Display` is rendered too.
pub fn discovery_file(text: &str, json: bool) -> bool {
    let name = if json { "fuzz.json" } else { "fuzz.yaml" };
    match crate::discovery::file_parse(Path::new(name), text, json) {
        Ok(services) => !services.is_empty(),
        Err(error) => {
            let _ = error.to_string();
            false
        }
    }
}
