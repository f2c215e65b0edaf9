"""What runs, measured: the bytes autograd saves, live bytes and peaks (a tracker), FLOPs counted
by ``FlopCounterMode``, the bytes optimizers really keep. The oracles of ``cost``.
"""
