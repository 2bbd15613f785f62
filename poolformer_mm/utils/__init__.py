from .runner import (build_runner, close_distributed, enable_amp,
                     enable_auto_scale_lr, load_config, set_resume)

__all__ = [
    'build_runner', 'close_distributed', 'enable_amp', 'enable_auto_scale_lr',
    'load_config', 'set_resume'
]
