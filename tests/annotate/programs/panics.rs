// Rust panics, chosen by argv[1]; built with panic=abort (and once with the default
// panic=unwind, where only "extern-c" leaves a core):
//   expect    Option::expect on None in lookup()
//   unwrap    Option::unwrap on None in run()
//   index     index out of bounds in run()
//   format    panic!("...{}...") in run()
//   extern-c  a panic inside an extern "C" function (cannot unwind)
//   abort     std::process::abort(), no panic
#[inline(never)]
fn lookup(values: &[u32], key: Option<u32>) -> u32 {
    values[key.expect("the key must be set") as usize]
}

#[inline(never)]
extern "C" fn callback(n: usize) -> u32 {
    if n < 100 {
        panic!("callback got {}", n);
    }
    0
}

#[inline(never)]
fn run(how: &str, n: usize) -> u32 {
    let values = vec![1u32, 2, 3];
    match how {
        "expect" => lookup(&values, None),
        "unwrap" => {
            let missing: Option<u32> = None;
            missing.unwrap()
        }
        "index" => values[n + 4],
        "format" => panic!("bad state {} of {}", n, values.len()),
        "extern-c" => callback(n),
        "abort" => std::process::abort(),
        _ => 0,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("{}", run(&args[1], args.len() + 1));
}
