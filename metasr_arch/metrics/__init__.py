"""Importing this package registers the plugin's metrics in BasicSR's METRIC_REGISTRY."""
from metasr_arch.metrics.weighted import (calculate_weighted_bias, calculate_weighted_mae, calculate_weighted_rmse,
                                          latitude_weights, masked_psnr, weighted_errors)

__all__ = ['calculate_weighted_bias', 'calculate_weighted_mae', 'calculate_weighted_rmse', 'latitude_weights',
           'masked_psnr', 'weighted_errors']
