//! Any bytes as the exchange's HTML listing: parsing never panics; what it accepts classifies
//! and yields document links under the exchange's address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provider_service::sources::announcements::{classify, parse_listing, pdf_url};

fuzz_target!(|data: &[u8]| {
    let asx = url::Url::parse("https://www.asx.com.au").expect("base URL");
    let html = String::from_utf8_lossy(data);
    if let Ok(items) = parse_listing(&html, &asx) {
        for a in items {
            let _ = classify(&a.headline, a.price_sensitive);
            assert!(pdf_url(&asx, &a.document_key).starts_with("https://www.asx.com.au/"));
        }
    }
});
