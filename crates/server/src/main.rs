fn main() {
    // Wired up by the CLI work (crates/server/src/cli.rs).
}
