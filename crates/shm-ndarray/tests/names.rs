//! Named arrays: a name holds its array until it is deleted, names can be listed, and an array
//! has at most one.

use shm_ndarray::{NameError, Pool, PoolOptions, ShmArray};

/// 4 MiB data segments, up to 16 MiB.
fn small() -> PoolOptions {
    PoolOptions::new().segment_capacity(4 << 20).max_size(16 << 20)
}

/// 1 MiB data segments, up to 8 MiB.
fn one_mib_segments() -> PoolOptions {
    PoolOptions::new().segment_capacity(1 << 20).max_size(8 << 20)
}

fn leftovers(pool: &str) -> Vec<String> {
    shm_testkit::shm_files(&format!("pyshm-{pool}"))
}

#[test]
fn named_arrays_live_until_deleted_and_can_be_listed() {
    let name = format!("testnamed{}", std::process::id());
    let pool = Pool::create(&small().name(&name)).unwrap();
    {
        let a = ShmArray::<i64>::from_slice(&pool, &[3], &[1, 2, 3]).unwrap();
        pool.publish("results", a.as_shared()).unwrap();
        assert!(matches!(pool.publish("results", a.as_shared()), Err(NameError::Exists(_))));
        assert!(matches!(pool.publish("a/b", a.as_shared()), Err(NameError::Invalid(_))));
    }
    assert_eq!(pool.names().unwrap(), vec!["results".to_owned()]);
    let found = ShmArray::<i64>::try_from(pool.lookup("results").unwrap()).unwrap();
    assert_eq!(found.to_vec(), vec![1, 2, 3], "the name kept it alive");
    drop(found);
    pool.unpublish("results").unwrap();
    assert!(matches!(pool.lookup("results"), Err(NameError::NotFound(_))));
    assert_eq!(pool.stats().used, 0, "freed with its name");
    pool.unlink();
    drop(pool);
    assert!(leftovers(&name).is_empty());
}

#[test]
fn an_array_has_at_most_one_name() {
    let pool = Pool::create(&one_mib_segments()).unwrap();
    let a = ShmArray::<u8>::zeros(&pool, &[8]).unwrap();
    pool.publish("a", a.as_shared()).unwrap();
    assert!(matches!(pool.publish("b", a.as_shared()), Err(NameError::AlreadyNamed)));
    assert_eq!(pool.names().unwrap(), vec!["a".to_owned()]);
    pool.unpublish("a").unwrap();
}
