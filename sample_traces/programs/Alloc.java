// Alloc.java - a JVM allocation workload: worker threads allocate short-lived byte
// arrays and keep a sliding window of survivors, so the young generation fills,
// the GC threads collect, and the heap's pages are faulted in as it grows.
// usage: java -Xms16m -Xmx256m -XX:+UseParallelGC Alloc.java THREADS MB_PER_THREAD
public class Alloc {
    public static void main(String[] args) throws Exception {
        int threads = args.length > 0 ? Integer.parseInt(args[0]) : 2;
        long mb = args.length > 1 ? Long.parseLong(args[1]) : 64;
        Thread[] ts = new Thread[threads];
        for (int t = 0; t < threads; t++) {
            ts[t] = new Thread(() -> {
                byte[][] window = new byte[256][];
                long bytes = 0;
                for (int i = 0; bytes < mb << 20; i++) {
                    byte[] b = new byte[4096 + (i % 64) * 1024];
                    b[b.length - 1] = 1;
                    window[i % window.length] = b;
                    bytes += b.length;
                }
            }, "alloc-" + t);
            ts[t].start();
        }
        for (Thread t : ts) t.join();
        System.out.println("done");
    }
}
