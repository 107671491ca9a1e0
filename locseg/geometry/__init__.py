"""locseg.geometry: poses, cameras and rotations as batched value types.

Conventions live at the top of the module that owns them:
``pose`` (frames, composition order, SE(3) tangent and perturbation side),
``camera`` (pixel convention, COLMAP models), ``rotation`` (quaternion order).
"""

from .camera import MODELS, Camera, CameraModel, get_model
from .pose import Pose, left_perturbation_jacobian
from .rotation import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    quaternion_to_axis_angle,
    quaternion_to_matrix,
    rotation_angle,
    skew,
    standardize_quaternion,
)
from .wrapper import TensorWrapper, as_float_tensor

__all__ = [
    "MODELS",
    "Camera",
    "CameraModel",
    "Pose",
    "TensorWrapper",
    "as_float_tensor",
    "axis_angle_to_matrix",
    "get_model",
    "left_perturbation_jacobian",
    "matrix_to_axis_angle",
    "matrix_to_quaternion",
    "quaternion_to_axis_angle",
    "quaternion_to_matrix",
    "rotation_angle",
    "skew",
    "standardize_quaternion",
]
