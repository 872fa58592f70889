//! sqlx::migrate! embeds the migration folders at compile time: a new migration must rebuild.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
