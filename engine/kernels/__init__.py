"""petcohort.engine.kernels"""
