import CLinuxExtras

public enum MemoryTuning {
    /// Requests carry up to 1 MiB of file data in buffers that live for one
    /// request, allocated on one thread and freed on another. glibc gave such
    /// blocks back to the kernel on free, so every 1 MiB write faulted in 256
    /// fresh zeroed pages in each process. Kept in the heap and not trimmed,
    /// freed buffers are reused warm (the heap keeps its peak, a few MiB per
    /// connection's requests in flight).
    public static func keepLargeBuffersWarm() {
        _ = mallopt(M_MMAP_THRESHOLD, 32 << 20)
        _ = mallopt(M_TRIM_THRESHOLD, 256 << 20)
    }
}
