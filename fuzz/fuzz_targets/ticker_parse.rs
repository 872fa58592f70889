//! Any string: parsing never panics, and a parsed identifier's canonical form parses back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use documents_api::Ticker;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Ticker::parse(text) {
        let again = Ticker::parse(&t.to_string()).expect("the canonical form parses");
        assert_eq!(again, t);
    }
});
