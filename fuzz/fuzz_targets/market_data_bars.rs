//! Any bytes as the end-of-day price answer: parsing never panics, and deriving the figures
//! from whatever bars it accepts never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provider_service::sources::market_data::{derive, parse_bars};

fuzz_target!(|data: &[u8]| {
    if let Ok(bars) = parse_bars(data) {
        let _ = derive(&bars);
    }
});
