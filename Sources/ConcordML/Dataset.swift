// Labelled images in memory, and the deterministic ways a data-parallel job splits and orders them.
//
// Vocabulary: a *shard* is the contiguous part of a data set one rank owns (`shard(_:of:)`); an *epoch
// order* is a permutation of indices computed from (seed, epoch) alone, so that every rank derives the same
// one without talking to the others; a *batch* is a list of indices gathered into contiguous buffers
// (`BatchBuffer`).

/// Labelled images: `count` images of `rows × cols` floats in 0…1, and one class label per image.
public struct Dataset: Sendable, Equatable {
    /// Pixels of all images, image after image, row-major within an image: `count × rows × cols` floats.
    public var images: [Float]
    /// One class index per image, each below `classes`.
    public var labels: [UInt8]
    /// Image height in pixels.
    public let rows: Int
    /// Image width in pixels.
    public let cols: Int
    /// The number of classes (10 for digits).
    public let classes: Int

    /// The number of images.
    public var count: Int { labels.count }
    /// Floats per image: `rows × cols`.
    public var pixelsPerImage: Int { rows * cols }

    /// A data set from its parts.
    /// - Parameters:
    ///   - images: `labels.count × rows × cols` floats.
    ///   - labels: one class index per image, each below `classes`.
    ///   - rows: image height.
    ///   - cols: image width.
    ///   - classes: the number of classes.
    public init(images: [Float], labels: [UInt8], rows: Int, cols: Int, classes: Int = 10) {
        precondition(rows > 0 && cols > 0, "Dataset: image size \(rows)×\(cols)")
        precondition(
            images.count == labels.count * rows * cols,
            "Dataset: \(images.count) pixels for \(labels.count) images of \(rows)×\(cols)")
        precondition(classes > 0 && classes <= 256, "Dataset: \(classes) classes")
        self.images = images
        self.labels = labels
        self.rows = rows
        self.cols = cols
        self.classes = classes
    }

    // MARK: - Shards and subsets

    /// The index range of shard `index` of `parts` over `count` items: contiguous, in rank order, covering
    /// 0..<count exactly; the first `count % parts` shards hold one item more than the others.
    /// - Parameters:
    ///   - index: the shard, in 0..<parts.
    ///   - parts: the number of shards, > 0.
    ///   - count: the number of items.
    public static func shardRange(_ index: Int, of parts: Int, count: Int) -> Range<Int> {
        precondition(parts > 0 && (0..<parts).contains(index), "shard \(index) of \(parts)")
        precondition(count >= 0, "shard of \(count) items")
        let base = count / parts
        let extra = count % parts
        let start = index * base + min(index, extra)
        return start..<(start + base + (index < extra ? 1 : 0))
    }

    /// Shard `index` of `parts`: the images in `Dataset.shardRange(index, of: parts, count: count)`.
    /// - Parameters:
    ///   - index: the shard, in 0..<parts (e.g. a rank).
    ///   - parts: the number of shards (e.g. the world size).
    public func shard(_ index: Int, of parts: Int) -> Dataset {
        subset(Dataset.shardRange(index, of: parts, count: count))
    }

    /// The images in a contiguous range, in order.
    /// - Parameter range: indices within 0..<count.
    public func subset(_ range: Range<Int>) -> Dataset {
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "subset \(range) of \(count) images")
        return Dataset(
            images: Array(images[range.lowerBound * pixelsPerImage..<range.upperBound * pixelsPerImage]),
            labels: Array(labels[range]), rows: rows, cols: cols, classes: classes)
    }

    /// The images at the given indices, in that order (repetitions allowed).
    /// - Parameter indices: indices within 0..<count.
    public func subset(indices: some Sequence<Int>) -> Dataset {
        var newImages: [Float] = []
        var newLabels: [UInt8] = []
        for i in indices {
            precondition(i >= 0 && i < count, "index \(i) outside 0..<\(count)")
            newImages.append(contentsOf: images[i * pixelsPerImage..<(i + 1) * pixelsPerImage])
            newLabels.append(labels[i])
        }
        return Dataset(images: newImages, labels: newLabels, rows: rows, cols: cols, classes: classes)
    }

    /// The images of another data set of the same geometry appended after these.
    /// - Parameter other: images of the same size and number of classes.
    public func appending(_ other: Dataset) -> Dataset {
        precondition(other.rows == rows && other.cols == cols && other.classes == classes, "appending: geometry")
        return Dataset(
            images: images + other.images, labels: labels + other.labels, rows: rows, cols: cols, classes: classes)
    }

    /// How many images each class has: `classes` counts.
    public func labelCounts() -> [Int] {
        var counts = [Int](repeating: 0, count: classes)
        for label in labels { counts[Int(label)] += 1 }
        return counts
    }

    // MARK: - Epoch orders

    /// A permutation of 0..<count that depends only on (`count`, `seed`, `epoch`): Fisher–Yates driven by
    /// `SplitMix64(seed:index:)` with the epoch as the index. Every rank computes the same one.
    /// - Parameters:
    ///   - count: the number of items.
    ///   - seed: the job's shuffle seed.
    ///   - epoch: the epoch number; each epoch gets an unrelated order.
    public static func permutation(count: Int, seed: UInt64, epoch: Int) -> [Int] {
        var order = Array(0..<count)
        var random = SplitMix64(seed: seed, index: UInt64(truncatingIfNeeded: epoch))
        var i = count - 1
        while i > 0 {
            order.swapAt(i, random.nextBelow(i + 1))
            i -= 1
        }
        return order
    }

    /// This set's epoch order: `Dataset.permutation(count: count, seed: seed, epoch: epoch)`.
    /// - Parameters:
    ///   - seed: the job's shuffle seed.
    ///   - epoch: the epoch number.
    public func epochOrder(seed: UInt64, epoch: Int) -> [Int] {
        Dataset.permutation(count: count, seed: seed, epoch: epoch)
    }

    /// The number of whole batches of `size` in one epoch (the last, partial batch is dropped so that
    /// every step of every rank has the same size).
    /// - Parameter size: images per batch, > 0.
    public func batchesPerEpoch(size: Int) -> Int {
        precondition(size > 0, "batch size \(size)")
        return count / size
    }

    /// Copies the images and labels at `indices` into contiguous buffers (no allocation).
    /// - Parameters:
    ///   - indices: indices within 0..<count.
    ///   - images: room for `indices.count × pixelsPerImage` floats.
    ///   - labels: room for `indices.count` labels.
    public func gather(
        _ indices: some Collection<Int>, images imageBuffer: UnsafeMutableBufferPointer<Float>,
        labels labelBuffer: UnsafeMutableBufferPointer<UInt8>
    ) {
        precondition(imageBuffer.count >= indices.count * pixelsPerImage, "gather: image buffer too small")
        precondition(labelBuffer.count >= indices.count, "gather: label buffer too small")
        let pixels = pixelsPerImage
        images.withUnsafeBufferPointer { source in
            var slot = 0
            for i in indices {
                precondition(i >= 0 && i < count, "gather: index \(i) outside 0..<\(count)")
                (imageBuffer.baseAddress! + slot * pixels).update(from: source.baseAddress! + i * pixels, count: pixels)
                labelBuffer[slot] = labels[i]
                slot += 1
            }
        }
    }
}

/// Reusable contiguous storage for one batch: fill it from a data set, hand `images` and `labels` to
/// `MLP.forwardBackward`. Allocated once; filling never allocates.
public final class BatchBuffer {
    /// Room for `capacity` images; the first `count × pixelsPerImage` floats hold the current batch.
    public let images: UnsafeMutableBufferPointer<Float>
    /// Room for `capacity` labels; the first `count` hold the current batch.
    public let labels: UnsafeMutableBufferPointer<UInt8>
    /// The most images a batch can hold.
    public let capacity: Int
    /// Floats per image.
    public let pixelsPerImage: Int
    /// Images in the current batch.
    public private(set) var count = 0

    /// An empty buffer.
    /// - Parameters:
    ///   - capacity: the largest batch.
    ///   - pixelsPerImage: floats per image.
    public init(capacity: Int, pixelsPerImage: Int) {
        precondition(capacity >= 0 && pixelsPerImage > 0, "BatchBuffer(\(capacity), \(pixelsPerImage))")
        self.capacity = capacity
        self.pixelsPerImage = pixelsPerImage
        images = .allocate(capacity: max(1, capacity * pixelsPerImage))
        images.initialize(repeating: 0)
        labels = .allocate(capacity: max(1, capacity))
        labels.initialize(repeating: 0)
    }

    deinit {
        images.deallocate()
        labels.deallocate()
    }

    /// Loads the images at `indices` of `dataset`.
    /// - Parameters:
    ///   - dataset: images of `pixelsPerImage` floats.
    ///   - indices: at most `capacity` indices into the data set.
    public func fill(from dataset: Dataset, indices: some Collection<Int>) {
        precondition(dataset.pixelsPerImage == pixelsPerImage, "BatchBuffer: image size differs")
        precondition(indices.count <= capacity, "BatchBuffer: \(indices.count) images, capacity \(capacity)")
        dataset.gather(indices, images: images, labels: labels)
        count = indices.count
    }

    /// The current batch's images: `count × pixelsPerImage` floats.
    public var batchImages: UnsafeBufferPointer<Float> {
        UnsafeBufferPointer(rebasing: images[0..<count * pixelsPerImage])
    }

    /// The current batch's labels: `count` bytes.
    public var batchLabels: UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(rebasing: labels[0..<count]) }
}
