"""Names a config uses without importing vLLM: the scheduler classes' dotted paths (for ``scheduler_cls``:
vLLM imports the class by path, in the engine-core process) and the tiny model's name."""

#: ``model`` value for the tiny random-weight Llama written locally on first use (``node.vllm.tiny_model``).
TINY_MODEL = "tiny"

#: ``node.vllm.scheduler.FairBatchingScheduler``: planned steps (CPU, or GPU without async scheduling).
SCHEDULER = "node.vllm.scheduler.FairBatchingScheduler"
#: The same on vLLM's ``AsyncScheduler`` (GPU default: overlapped steps).
ASYNC_SCHEDULER = "node.vllm.scheduler.FairBatchingAsyncScheduler"
#: The schedulers engine replicas run: they also publish ``node_stats()`` with each step's stats.
SERVED_SCHEDULER = "node.vllm.served_scheduler.ServedFairBatchingScheduler"
SERVED_ASYNC_SCHEDULER = "node.vllm.served_scheduler.ServedFairBatchingAsyncScheduler"
