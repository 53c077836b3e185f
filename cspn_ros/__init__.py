"""cspn_ros: real-time depth completion (CSPN family) for ROS 2.

`from cspn_ros import DepthCompleter` is the Python API shared by the node, replay and training.
The import is lazy so ROS-free, torch-free modules (conversions, sync) stay light to import.
"""
__version__ = '0.1.0'
__all__ = ['DepthCompleter', 'ModelConfig', '__version__']


def __getattr__(name):
    if name == 'DepthCompleter':
        from cspn_ros.model.completer import DepthCompleter
        return DepthCompleter
    if name == 'ModelConfig':
        from cspn_ros.config import ModelConfig
        return ModelConfig
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
