//! The simulator's own trace format: CSV with a header line
//!
//! ```text
//! submit_s,framework,tasks,duration_s,cpus,mem
//! 0.0,batch,10,60,0.5,512
//! 2.5,service,3,86400,1,2048
//! ```
//!
//! one job per line: submission time (seconds from the start), the
//! framework that runs it, its number of tasks, each task's duration
//! (seconds), cpus and memory (MiB). Lines for other frameworks are skipped.

use std::path::Path;

use super::TraceJob;

const HEADER: &str = "submit_s,framework,tasks,duration_s,cpus,mem";

/// The jobs of `framework` in the trace at `path`, in submission order.
pub fn read(path: &Path, framework: &str) -> Result<Vec<TraceJob>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse(&text, framework).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse(text: &str, framework: &str) -> Result<Vec<TraceJob>, String> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim() == HEADER => {}
        _ => return Err(format!("line 1: the header must be `{HEADER}`")),
    }
    let mut jobs = Vec::new();
    for (i, line) in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if cols.len() != 6 {
            return Err(format!(
                "line {n}: {} columns, want 6 ({HEADER})",
                cols.len()
            ));
        }
        if cols[1] != framework {
            continue;
        }
        let num = |k: usize, name: &str| -> Result<f64, String> {
            match cols[k].parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                _ => Err(format!(
                    "line {n}: {name} `{}` is not a number >= 0",
                    cols[k]
                )),
            }
        };
        let tasks = num(2, "tasks")?;
        if tasks < 1.0 || tasks.fract() != 0.0 {
            return Err(format!("line {n}: tasks must be a whole number >= 1"));
        }
        jobs.push(TraceJob {
            submit_ms: (num(0, "submit_s")? * 1000.0).round() as u64,
            tasks: tasks as u32,
            duration_ms: num(3, "duration_s")? * 1000.0,
            cpus: num(4, "cpus")?,
            mem: num(5, "mem")?,
        });
    }
    jobs.sort_by_key(|j| j.submit_ms);
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_reads_and_bad_lines_name_themselves() {
        let text = "submit_s,framework,tasks,duration_s,cpus,mem\n2,batch,3,60,0.5,512\n1,service,1,100,1,1024\n0.5,batch,1,10,0.1,64\n";
        let jobs = parse(text, "batch").expect("valid");
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].submit_ms, 500);
        assert_eq!(jobs[1].tasks, 3);
        assert!(
            parse("x,y\n", "batch")
                .expect_err("header")
                .contains("header")
        );
        let bad = "submit_s,framework,tasks,duration_s,cpus,mem\n1,batch,two,60,0.5,512\n";
        assert!(
            parse(bad, "batch")
                .expect_err("tasks")
                .starts_with("line 2: tasks")
        );
    }
}
