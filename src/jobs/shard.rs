//! Splitting one job into N deterministic parts for a cluster scheduler (Slurm job arrays,
//! Kubernetes Indexed Jobs). libre schedules nothing itself: every part is an ordinary process
//! told its index, and `libre detect merge` / `libre report merge` join the parts
//! (docs/cluster.md).
//!
//! A part is `K/N` with `0 <= K < N`. When no `--shard` is given, the scheduler's variables are
//! used:
//! - Slurm, `--array=0-(N-1)`: K = `SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`, N =
//!   `SLURM_ARRAY_TASK_COUNT`.
//! - Slurm with `--shard-count N`: K = `SLURM_ARRAY_TASK_ID` as is. This is what the job scripts
//!   use, because it survives resubmitting single tasks (`sbatch --array=2` after task 2 was
//!   killed), where the array's own count and minimum describe the resubmission, not the run.
//! - Kubernetes Indexed Job: K = `JOB_COMPLETION_INDEX`, N = `--shard-count` (Kubernetes does not
//!   export the completion count).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Part `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Shard> {
        let bad = || Error::param("shard", s, "expected K/N with 0 <= K < N");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n): (usize, usize) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        Shard::new(k, n).map_err(|_| bad())
    }
}

/// Where the shard came from, for the note a command prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardSource {
    Flag,
    Slurm,
    Kubernetes,
}

impl Shard {
    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if count == 0 || index >= count {
            return Err(Error::param(
                "shard",
                format!("{index}/{count}"),
                "expected K/N with 0 <= K < N",
            ));
        }
        Ok(Shard { index, count })
    }

    /// The contiguous part of `0..total` this shard owns: `[total*K/N, total*(K+1)/N)`. The parts
    /// of all K tile `0..total` in order, with sizes differing by at most one.
    pub fn range(&self, total: usize) -> Range<usize> {
        let at = |k: usize| ((total as u128 * k as u128) / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }

    /// Whether the shard splits anything (N > 1).
    pub fn is_split(&self) -> bool {
        self.count > 1
    }

    /// The shard to run: `--shard` when given, else the scheduler's variables (read through
    /// `var`, so tests need not touch the process environment), else none.
    pub fn resolve(
        flag: Option<&str>,
        count_flag: Option<usize>,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<(Shard, ShardSource)>> {
        if let Some(s) = flag {
            if let Some(count) = count_flag {
                return Err(Error::param(
                    "shard_count",
                    count,
                    "goes with a Kubernetes Indexed Job's JOB_COMPLETION_INDEX; the shard K/N \
                     already gives the count",
                ));
            }
            return Ok(Some((s.parse()?, ShardSource::Flag)));
        }
        let num = |name: &str| -> Result<Option<usize>> {
            match var(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    Error::invalid(format!("{name}='{v}' is not a non-negative integer"))
                }),
            }
        };
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            if let Some(count) = count_flag {
                let shard = Shard::new(id, count).map_err(|_| {
                    Error::param(
                        "shard_count",
                        count,
                        format!(
                            "SLURM_ARRAY_TASK_ID {id} does not fit: submit task ids from 0 to {}",
                            count.saturating_sub(1)
                        ),
                    )
                })?;
                return Ok(Some((shard, ShardSource::Slurm)));
            }
            let count = num("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                Error::invalid(
                    "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not (Slurm older \
                     than 17.11?): give the shard K/N",
                )
            })?;
            if num("SLURM_ARRAY_TASK_STEP")?.is_some_and(|s| s != 1) {
                return Err(Error::invalid(
                    "the job array has a step other than 1 (--array=A-B:S): submit \
                     --array=0-(N-1) or give the shard K/N",
                ));
            }
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let index = id.checked_sub(min).ok_or_else(|| {
                Error::invalid(format!(
                    "SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"
                ))
            })?;
            let shard = Shard::new(index, count).map_err(|_| {
                Error::invalid(format!(
                    "SLURM_ARRAY_TASK_ID {id} (min {min}) does not fit SLURM_ARRAY_TASK_COUNT \
                     {count}: submit a contiguous --array=0-(N-1), or give the shard K/N"
                ))
            })?;
            return Ok(Some((shard, ShardSource::Slurm)));
        }
        match (num("JOB_COMPLETION_INDEX")?, count_flag) {
            (Some(index), Some(count)) => {
                let shard = Shard::new(index, count).map_err(|_| {
                    Error::param(
                        "shard_count",
                        count,
                        format!(
                            "JOB_COMPLETION_INDEX {index} does not fit (set the Job's completions \
                             to the same count)"
                        ),
                    )
                })?;
                Ok(Some((shard, ShardSource::Kubernetes)))
            }
            (Some(_), None) => Err(Error::Missing {
                name: "shard_count",
                why: "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but not the shard \
                      count: the Job's completion count, or give the shard K/N"
                    .into(),
            }),
            (None, Some(count)) => Err(Error::param(
                "shard_count",
                count,
                "needs a task index (SLURM_ARRAY_TASK_ID in a Slurm job array, \
                 JOB_COMPLETION_INDEX in a Kubernetes Indexed Job); elsewhere give the shard K/N",
            )),
            (None, None) => Ok(None),
        }
    }

    /// [`Shard::resolve`] on the process environment, with a note saying where the shard came
    /// from when it was not the flag.
    pub fn from_args(
        flag: Option<&str>,
        count_flag: Option<usize>,
        note: &mut dyn FnMut(String),
    ) -> Result<Option<Shard>> {
        let got = Shard::resolve(flag, count_flag, &|k| std::env::var(k).ok())?;
        match &got {
            Some((s, ShardSource::Slurm)) => note(format!(
                "shard {s} from the Slurm job array (SLURM_ARRAY_TASK_ID{}; a shard given \
                 explicitly overrides)",
                if count_flag.is_some() {
                    " and the shard count"
                } else {
                    " / SLURM_ARRAY_TASK_COUNT"
                }
            )),
            Some((s, ShardSource::Kubernetes)) => note(format!(
                "shard {s} from the Kubernetes Indexed Job (JOB_COMPLETION_INDEX and the shard \
                 count)"
            )),
            _ => {}
        }
        Ok(got.map(|(s, _)| s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn ranges_tile_in_order() {
        for total in [0usize, 1, 7, 10, 1000] {
            for n in 1..=9 {
                let mut next = 0;
                for k in 0..n {
                    let r = Shard::new(k, n).unwrap().range(total);
                    assert_eq!(r.start, next);
                    assert!(r.len() <= total / n + 1 && r.len() + 1 >= total / n);
                    next = r.end;
                }
                assert_eq!(next, total);
            }
        }
    }

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            "2/5".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 5 }
        );
        for bad in ["5/5", "1/0", "a/2", "3", "-1/2", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn scheduler_variables() {
        let none = env(&[]);
        assert_eq!(Shard::resolve(None, None, &none).unwrap(), None);
        // The flag wins over the environment.
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        let (s, src) = Shard::resolve(Some("1/2"), None, &slurm).unwrap().unwrap();
        assert_eq!((s, src), (Shard::new(1, 2).unwrap(), ShardSource::Flag));
        let (s, src) = Shard::resolve(None, None, &slurm).unwrap().unwrap();
        assert_eq!((s, src), (Shard::new(3, 4).unwrap(), ShardSource::Slurm));
        // --array=1-4: indices relative to the minimum.
        let offset = env(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        let (s, _) = Shard::resolve(None, None, &offset).unwrap().unwrap();
        assert_eq!(s, Shard::new(3, 4).unwrap());
        for bad in [
            env(&[("SLURM_ARRAY_TASK_ID", "3")]),
            env(&[
                ("SLURM_ARRAY_TASK_ID", "4"),
                ("SLURM_ARRAY_TASK_COUNT", "4"),
            ]),
            env(&[
                ("SLURM_ARRAY_TASK_ID", "2"),
                ("SLURM_ARRAY_TASK_COUNT", "2"),
                ("SLURM_ARRAY_TASK_STEP", "2"),
            ]),
            env(&[
                ("SLURM_ARRAY_TASK_ID", "x"),
                ("SLURM_ARRAY_TASK_COUNT", "2"),
            ]),
            env(&[("JOB_COMPLETION_INDEX", "1")]),
        ] {
            assert!(Shard::resolve(None, None, &bad).is_err());
        }
        // --shard-count under Slurm: the absolute task id (a resubmitted single task).
        let single = env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_MIN", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "1"),
        ]);
        let (s, _) = Shard::resolve(None, Some(3), &single).unwrap().unwrap();
        assert_eq!(s, Shard::new(2, 3).unwrap());
        assert!(Shard::resolve(None, Some(2), &single).is_err());
        let k8s = env(&[("JOB_COMPLETION_INDEX", "2")]);
        let (s, src) = Shard::resolve(None, Some(3), &k8s).unwrap().unwrap();
        assert_eq!(
            (s, src),
            (Shard::new(2, 3).unwrap(), ShardSource::Kubernetes)
        );
        assert!(Shard::resolve(None, Some(2), &k8s).is_err());
        assert!(Shard::resolve(None, Some(2), &none).is_err());
        assert!(Shard::resolve(Some("0/2"), Some(2), &none).is_err());
    }
}
