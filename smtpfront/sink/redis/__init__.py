"""The Redis Streams queue: the production sink, one module a concern.

``sink`` (:class:`~smtpfront.sink.redis.sink.RedisStreamSink`: the in-flight budget, the
high-water mark), ``writer`` (one message: its parts, dedup, commit), ``topology`` (one server,
Sentinel's master, or a Cluster's shards), ``lane`` (group commit on one connection), ``wire``
(RESP out, hiredis in), ``url`` (the queue URL grammar), ``large`` (bodies in chunk keys) and
``limits`` (the client limits' counters in the queue's Redis). Nothing is imported here, so
that reading the URL grammar (the consumer, the queue tools) does not load the sink.
"""
