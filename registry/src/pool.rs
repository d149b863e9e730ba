//! A bounded set of worker threads for layer transfers: network-bound work on 2 cores needs
//! no async runtime, only a few blocking requests in flight.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;

/// Runs `work` on every job with at most `workers` threads, and returns the results in job
/// order. After the first error no new job starts (those running finish); jobs not started
/// give `None`.
pub(crate) fn run<J, T, E>(
    jobs: Vec<J>,
    workers: usize,
    work: impl Fn(J) -> Result<T, E> + Sync,
) -> Vec<Option<Result<T, E>>>
where
    J: Send,
    T: Send,
    E: Send,
{
    let count = jobs.len();
    let jobs: Vec<Mutex<Option<J>>> = jobs.into_iter().map(|job| Mutex::new(Some(job))).collect();
    let results: Vec<Mutex<Option<Result<T, E>>>> = (0..count).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let worker = || {
        loop {
            if failed.load(Ordering::SeqCst) {
                break;
            }
            let index = next.fetch_add(1, Ordering::SeqCst);
            if index >= count {
                break;
            }
            let job = jobs[index]
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let Some(job) = job else { continue };
            let result = work(job);
            if result.is_err() {
                failed.store(true, Ordering::SeqCst);
            }
            *results[index]
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(result);
        }
    };
    thread::scope(|scope| {
        for _ in 1..workers.clamp(1, count.max(1)) {
            scope.spawn(worker);
        }
        worker();
    });
    results
        .into_iter()
        .map(|result| result.into_inner().unwrap_or_else(PoisonError::into_inner))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_job_order_and_errors_stop_new_jobs() {
        let results = run((0..10).collect(), 3, |n: u32| Ok::<_, ()>(n * 2));
        let values: Vec<u32> = results.into_iter().map(|r| r.unwrap().unwrap()).collect();
        assert_eq!(values, (0..10).map(|n| n * 2).collect::<Vec<_>>());
        let results = run(
            (0..100).collect(),
            1,
            |n: u32| if n == 3 { Err(n) } else { Ok(n) },
        );
        assert_eq!(results[3], Some(Err(3)));
        assert!(
            results[4..].iter().all(Option::is_none),
            "one worker stops after the error"
        );
    }
}
