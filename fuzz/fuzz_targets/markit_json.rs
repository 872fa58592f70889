//! Any bytes as the JSON announcements API's answer: parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provider_service::sources::announcements::{classify, parse_markit};

fuzz_target!(|data: &[u8]| {
    let asx = url::Url::parse("https://www.asx.com.au").expect("base URL");
    if let Ok(items) = parse_markit(data, &asx) {
        for a in items {
            let _ = classify(&a.headline, a.price_sensitive);
        }
    }
});
