//! The seed of a random test, so a failure can be replayed.

/// Seeds this thread's `fastrand` generator from `TEST_SEED` when it is
/// set, or at random otherwise, and prints the seed (test output shows it
/// when the test fails). Rerun with `TEST_SEED=<seed>` to get the same
/// draws again.
pub fn seeded() -> u64 {
    let seed = match std::env::var("TEST_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TEST_SEED={s:?} is not a u64")),
        Err(_) => fastrand::u64(..),
    };
    fastrand::seed(seed);
    println!("seed = {seed}");
    seed
}
